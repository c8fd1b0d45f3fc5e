"""Write one report from experiment runs made at different times or on different machines (seeds merged).

    coherentize report runs/seeds01 runs/seeds234 --out runs/merged

Each RUN_DIR is a finished `coherentize run` output folder (its runs.json). The runs must be the same experiment:
the same config but for seeds, out_dir, jobs and cosmetic settings, and the same code version; otherwise one error
names the first field that differs. Writes report.md, report.html, the PNGs, report.json and merged.json into --out.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output folders of finished `coherentize run`s")
    p.add_argument("--out", required=True, help="folder for the merged report")


def main(args) -> int:
    from coherentize.io import writable_dir
    from coherentize.recipes.merge import merge_runs

    out = writable_dir(args.out, "--out")
    report = merge_runs(args.run_dirs, out)
    print(f"report: {report}  (and {report.with_suffix('.html')})")
    return 0
