"""The one table of benchmarks/gpu.sh: step time and MFU per arm, old vs new precision side by side (full fine-tuning
and LoRA), the end-to-end runs' wall and stage times, and each step's exit status.

    python benchmarks/gpu_table.py runs/gpu-check      # reads <dir>/ratio_*.log, run_*/summary.json, steps.txt
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROW = re.compile(r"^(?P<arm>\S.{0,25}?)\s+(?P<ms>[\d.]+)\s+(?P<wall>[\d.]+)\s+(?P<toks>\d+)\s+(?P<peak>-?\d+)\s+"
                 r"(?P<stepmem>-?\d+)(?:\s+x\s*(?P<ratio>[\d.]+)\s+x\s*[\d.]+\s+x\s*[\d.]+)?\s+(?P<tflops>[\d.]+)\s+"
                 r"(?P<mfu>[\d.]+)%$")


def arms(log: Path) -> dict[str, dict]:
    """arm -> {ms, peak, ratio, mfu} from a step_ratio.py log (its result table)."""
    out = {}
    if not log.is_file():
        return out
    for line in log.read_text().splitlines():
        m = ROW.match(line.rstrip())
        if m:
            out[m["arm"].strip()] = {"ms": float(m["ms"]), "peak": int(m["peak"]), "mfu": float(m["mfu"]),
                                     "ratio": float(m["ratio"]) if m["ratio"] else None}
    return out


def ratio_table(root: Path, kind: str) -> list[str]:
    old, new = arms(root / f"ratio_{kind}_old.log"), arms(root / f"ratio_{kind}_new.log")
    if not old and not new:
        return [f"(no step_ratio results for {kind})"]
    lines = [f"| arm ({kind}) | old ms | old MFU | old /SFT | old peak MiB | new ms | new MFU | new /SFT | new peak MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    cell = lambda r, k, f: (f.format(r[k]) if r and r.get(k) is not None else "–")  # noqa: E731
    for arm in list(dict.fromkeys([*old, *new])):
        o, n = old.get(arm), new.get(arm)
        lines.append(f"| {arm} | {cell(o, 'ms', '{:.1f}')} | {cell(o, 'mfu', '{:.1f}%')} | {cell(o, 'ratio', 'x{:.2f}')} "
                     f"| {cell(o, 'peak', '{}')} | {cell(n, 'ms', '{:.1f}')} | {cell(n, 'mfu', '{:.1f}%')} "
                     f"| {cell(n, 'ratio', 'x{:.2f}')} | {cell(n, 'peak', '{}')} |")
    return lines


def run_table(root: Path) -> list[str]:
    lines = ["| run | wall s | stages (s) |", "|---|---|---|"]
    for summary in sorted(root.glob("run_*/summary.json")):
        s = json.loads(summary.read_text())
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s.get("stage_seconds", {}).items())
        lines.append(f"| {summary.parent.name} | {s.get('wall_seconds', 0):.1f} | {stages} |")
    return lines


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["runs/gpu-check"])[0])
    env = (root / "env.log").read_text().strip() if (root / "env.log").is_file() else "?"
    print(f"# GPU check ({env.splitlines()[0] if env else '?'})\n")
    print("old = bfloat16 weights + autocast (before model.precision); new = float32 master weights + bf16 autocast "
          "(model.precision: bf16-mixed). Dry run: old = float32, new = bf16-mixed, tiny model, CPU.\n")
    for kind in ("full", "lora"):
        print("\n".join(ratio_table(root, kind)) + "\n")
    print("\n".join(run_table(root)) + "\n")
    if (root / "steps.txt").is_file():
        print("steps (name, exit status, seconds): " + "; ".join(
            " ".join(line.split()) for line in (root / "steps.txt").read_text().splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
