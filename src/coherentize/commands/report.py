"""Recompute a docs/results.md section from committed per-item data, or export a finished run's data to commit.

    coherentize report --export runs/quick --out docs/results/data/quick_smoke     # a run's data, ready to commit
    coherentize report --from-data docs/results/data/quick_smoke --into docs/results.md           # rewrite it
    coherentize report --from-data docs/results/data/quick_smoke --into docs/results.md --check   # exit 1 if stale
    coherentize report --from-data docs/results/data/quick_smoke                                  # print it

The data folder (manifest.json, items.csv, labels.csv: ids, labels and numbers, never text; report/data.py) is
what every experiment's report writes into <out_dir>/data/. The section is everything between
``<!-- generated:<name> -->`` and ``<!-- /generated:<name> -->`` (name: the data folder's name); it is appended when
the page has none yet, and its forest plot is written to results/<name>_forest.png beside the page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coherentize.errors import CoherentizeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-data", dest="from_data", metavar="DIR", help="a results data folder to recompute from")
    p.add_argument("--into", metavar="PAGE", help="with --from-data: the Markdown page whose section is rewritten "
                                                  "(default: print the section)")
    p.add_argument("--check", action="store_true", help="with --into: write nothing; exit 1 when the page's section "
                                                        "differs from the recomputed one")
    p.add_argument("--export", metavar="RUN_DIR", help="a finished experiment's out_dir whose data to copy to --out")
    p.add_argument("--out", metavar="DIR", help="with --export: the data folder to write")


def main(args) -> int:
    from coherentize.report import data, section

    if args.export:
        if not args.out or args.from_data:
            raise CoherentizeError("--export RUN_DIR needs --out DIR (and no --from-data).")
        dest = data.export_run(Path(args.export), Path(args.out))
        print(f"wrote {dest} ({', '.join(data.FILES)})")
        return 0
    if not args.from_data:
        raise CoherentizeError("give --from-data DIR (recompute a section) or --export RUN_DIR --out DIR.")
    folder = Path(args.from_data)
    name = folder.resolve().name
    loaded = data.read(folder)
    figs = section.figures(loaded)
    text = section.section_markdown(loaded, name, figs)
    if not args.into:
        if args.check:
            raise CoherentizeError("--check needs --into PAGE.")
        print(text)
        return 0
    page = Path(args.into)
    if not page.is_file():
        raise CoherentizeError(f"{page}: page not found.")
    old = page.read_text(encoding="utf-8")
    new = section.replace_section(old, name, text, str(page))
    if args.check:
        if new != old:
            print(f"{page}: section {name} differs from its data in {folder} (regenerate it without --check).",
                  file=sys.stderr)
            return 1
        print(f"{page}: section {name} matches {folder}.")
        return 0
    page.write_text(new, encoding="utf-8")
    plot = section.write_forest(figs, page.parent / "results" / f"{name}_forest.png")
    print(f"rewrote section {name} of {page}" + (f"; plot {plot}" if plot else ""))
    return 0
