"""Reports from finished runs: merge runs of other seeds, export a run's per-item data, or recompute a docs/results.md
section from committed per-item data.

    coherentize report runs/seeds01 runs/seeds234 --out runs/merged                # one report from several runs
    coherentize report --export runs/quick --out docs/results/data/quick_smoke     # a run's data, ready to commit
    coherentize report --from-data docs/results/data/quick_smoke --into docs/results.md           # rewrite it
    coherentize report --from-data docs/results/data/quick_smoke --into docs/results.md --check   # exit 1 if stale
    coherentize report --from-data docs/results/data/quick_smoke                                  # print it

Merging: each RUN_DIR is a finished `coherentize run` output folder (its runs.json). The runs must be the same
experiment: the same config but for seeds, out_dir, jobs and cosmetic settings, and the same code version (the
resolved precision included); otherwise one error names the first field that differs. With --allow-differences such
runs are merged all the same (the first run's config heads the report) and MERGE_NOTES.md and merged.json list every
differing field. Writes report.md, report.html, the PNGs, report.json and merged.json into --out.

Per-item data: the folder (manifest.json, items.csv, labels.csv: ids, labels and numbers, never text; report/data.py)
is what every experiment's report writes into <out_dir>/data/. A section is everything between
``<!-- generated:<name> -->`` and ``<!-- /generated:<name> -->`` (name: the data folder's name); it is appended when
the page has none yet, and its forest plot is written to results/<name>_forest.png beside the page.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coherentize.errors import CoherentizeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="output folders of finished `coherentize run`s to "
                                                                  "merge into one report (with --out)")
    p.add_argument("--out", metavar="DIR", help="the merged report's folder, or with --export the data folder to write")
    p.add_argument("--from-data", dest="from_data", metavar="DIR", help="a results data folder to recompute from")
    p.add_argument("--into", metavar="PAGE", help="with --from-data: the Markdown page whose section is rewritten "
                                                  "(default: print the section)")
    p.add_argument("--check", action="store_true", help="with --into: write nothing; exit 1 when the page's section "
                                                        "differs from the recomputed one")
    p.add_argument("--allow-differences", dest="allow_differences", action="store_true",
                   help="merge runs whose configs or code versions differ in more than seeds; MERGE_NOTES.md and "
                        "merged.json then list every differing field")
    p.add_argument("--export", metavar="RUN_DIR", help="a finished experiment's out_dir whose data to copy to --out")


def main(args) -> int:
    modes = [bool(args.run_dirs), bool(args.export), bool(args.from_data)]
    if sum(modes) != 1:
        raise CoherentizeError("give RUN_DIR... --out DIR (merge runs), --export RUN_DIR --out DIR (a run's data), "
                               "or --from-data DIR (recompute a section); one of the three.")
    if args.allow_differences and not args.run_dirs:
        raise CoherentizeError("--allow-differences applies to merging runs (RUN_DIR... --out DIR) only.")
    if args.run_dirs:
        return _merge(args)
    if args.export:
        return _export(args)
    return _from_data(args)


def _merge(args) -> int:
    from coherentize.io import writable_dir
    from coherentize.recipes.merge import NOTES_FILE as MERGE_NOTES, merge_runs

    if not args.out:
        raise CoherentizeError("merging runs needs --out DIR.")
    out = writable_dir(args.out, "--out")
    report = merge_runs(args.run_dirs, out, allow_differences=args.allow_differences)
    print(f"report: {report}  (and {report.with_suffix('.html')})")
    notes = report.parent / MERGE_NOTES
    if notes.is_file():
        print(f"these runs differ in more than seeds: see {notes}", file=sys.stderr)
    return 0


def _export(args) -> int:
    from coherentize.report import data

    if not args.out:
        raise CoherentizeError("--export RUN_DIR needs --out DIR.")
    dest = data.export_run(Path(args.export), Path(args.out))
    print(f"wrote {dest} ({', '.join(data.FILES)})")
    return 0


def _from_data(args) -> int:
    from coherentize.report import data, section

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
