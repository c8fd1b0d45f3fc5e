"""benchmarks/gpu.sh --dry-run: the GPU check's every step on CPU with tiny models (the same script that runs on a lent
GPU), so the script cannot rot between the sessions that have a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_step_and_prints_its_table(tmp_path):
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "USE_HUB_KERNELS": "YES",
           "COHERENTIZE_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| output-KL+ACT +leash |" in table and "| run_default |" in table and "| run_quick |" in table
    steps = (tmp_path / "out" / "steps.txt").read_text().split("\n")
    assert [line.split()[:2] for line in steps if line] == [
        [name, "0"] for name in ("models", "ratio_full_old", "ratio_full_new", "ratio_lora_old", "ratio_lora_new",
                                 "run_default", "run_quick")]
    assert "profile of output-KL+ACT" in (tmp_path / "out" / "ratio_full_new.log").read_text()
    # every temporary folder the check made is gone (the step-ratio benchmark used to leave one per run in /tmp)
    assert list((tmp_path / "tmp").iterdir()) == []
