"""Loading a model that does not exist is one line and exit 2, not transformers' retries and a hub traceback."""

import os
import socket
import subprocess
import sys

import pytest

from coherentize.errors import CoherentizeError
from coherentize.models import ModelConfig, load_model


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["no_such_model_dir", "no-such-org/no-such-model"])
def test_export_of_a_missing_model_is_one_line_and_exit_2(tmp_path, name):
    # Online mode with an unreachable hub (a closed loopback port): the case that printed 23 lines of retries.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "coherentize", "export", "--model", name, "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{name!r} is not a local file or folder" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_load_of_an_invalid_name_is_a_clear_error():
    with pytest.raises(CoherentizeError, match="not a valid hub id"):
        load_model(ModelConfig(name_or_path="not a model!", device="cpu"))
