"""The narrow pressures' stages in this process (jobs 1, as before they were jobs) vs two at a time (jobs 2).

    python benchmarks/pressure_jobs.py --config configs/counterweight_dose.yaml --set seeds=[0,1] \
        --set 'pressure.kinds=[risky_finance]'

Runs the experiment once (`coherentize run`, jobs 1: organism, arms, start models, the pressures' data and every
pressure stage) into a temporary folder, then twice more on copies of that folder from which the pressures' measures
and fine-tunes (pressure/before-*, train-*, after-*) are deleted: (a) jobs 1, the stages one after another in this
process on every core's thread; (b) jobs 2, two at a time in spawned processes of half the threads each
(recipes/pressure.py's PressureJob through recipes/jobs.run_in_processes). Everything else is reused from the first
run, so the two wall times are the pressure stages' (plus the same start-up and report for both). Prints both, the
throughput ratio, and how many per-item measures differ by more than 1e-4 between (a) and (b) (threads change float
rounding, and a fine-tune's rounding carries into its measures).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REDONE = ("before-", "train-", "after-")


def _run(config: str, out: Path, sets: list[str], jobs: int) -> float:
    cmd = [sys.executable, "-m", "coherentize", "run", config, "--set", f"out_dir={out}", "--set", f"jobs={jobs}"]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _items(out: Path) -> dict:
    with (out / "pressure_items.csv").open() as f:
        return {tuple(r[k] for k in r if k != "value"): float(r["value"]) for r in csv.DictReader(f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/counterweight_dose.yaml")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="a config override, as `run --set`")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        first = _run(args.config, base, args.sets, 1)
        walls, outs = {}, {}
        for jobs in (1, 2):
            out = outs[jobs] = Path(tmp) / f"jobs{jobs}"
            shutil.copytree(base, out)
            for d in (out / "stages" / "pressure").iterdir():
                if d.name.startswith(REDONE):
                    shutil.rmtree(d)
            walls[jobs] = _run(args.config, out, args.sets, jobs)
        a, b = _items(outs[1]), _items(outs[2])
        assert a.keys() == b.keys(), "the two runs measured different items"
        differ = sum(abs(a[k] - b[k]) > 1e-4 * max(1.0, abs(a[k])) for k in a)
        stages = sum(d.name.startswith(REDONE) for d in (base / "stages" / "pressure").iterdir())
    print(f"config={args.config} sets={args.sets} first run (everything, jobs 1): {first:.1f} s")
    print(f"(a) the {stages} pressure stages in this process, jobs 1: {walls[1]:7.1f} s wall")
    print(f"(b) the same as jobs, two at a time (jobs 2):      {walls[2]:7.1f} s wall")
    print(f"throughput (b)/(a): {walls[1] / walls[2]:.2f}x; per-item measures differing by more than 1e-4 "
          f"(relative): {differ} of {len(a)}")


if __name__ == "__main__":
    main()
