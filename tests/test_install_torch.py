""".ci/install-torch (the Makefile's torch step): the CUDA build where a GPU is present, else a CPU wheel pip already
finds, else PyTorch's CPU index with PyPI kept as an extra index. A fake python records the pip commands."""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "install-torch"
SYSTEM_PATH = "/usr/bin:/bin"


def run(tmp_path, picked: str, gpu: bool) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "pip.log"
    fake = bin_dir / "python"
    fake.write_text(f"""#!/bin/bash
if [[ "$1" == "-c" ]]; then exec {sys.executable} "$@"; fi
echo "$*" >> {log}
if [[ "$*" == *--dry-run* ]]; then echo '{{"install": [{{"metadata": {{"version": "{picked}"}}}}]}}'; fi
""")
    fake.chmod(0o755)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: test'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), str(fake), "2.13.0"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [l for l in log.read_text().splitlines() if "--dry-run" not in l]


def test_gpu_takes_the_default_index(tmp_path):
    assert run(tmp_path, "2.13.0", gpu=True) == ["-m pip install -q torch==2.13.0"]


@pytest.mark.skipif(shutil.which("nvidia-smi", path=SYSTEM_PATH) is not None or platform.system() == "Darwin",
                    reason="needs a Linux machine without nvidia-smi")
def test_without_a_gpu_a_found_cpu_wheel_is_used_else_the_cpu_index(tmp_path):
    assert run(tmp_path, "2.13.0+cpu", gpu=False) == ["-m pip install -q torch==2.13.0"]
    os.remove(tmp_path / "pip.log")
    (cmd,) = run(tmp_path, "2.13.0", gpu=False)
    assert cmd == ("-m pip install -q --index-url https://download.pytorch.org/whl/cpu "
                   "--extra-index-url https://pypi.org/simple torch==2.13.0")
