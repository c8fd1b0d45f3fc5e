"""A judge audit of a finished experiment: sample its judged outputs, then score every judge against a reader's labels.

    coherentize audit sample RUN_DIR --sheet /tmp/audit/sheet.jsonl --reading /tmp/audit/reading.md
    coherentize audit score /tmp/audit/sheet.jsonl --labels /tmp/audit/labels.csv --judge string \
        --judge jailbreakeval:StringMatching-zou2023universal --out docs/results/data/EXP/judge_audit.csv

sample: the run must have saved its outputs (``--set eval.save_outputs=true``); the sheet is stratified by model group
(baseline, control, each arm) and the primary judge's label, --per-stratum outputs each. The sheet and the reading
file hold full outputs, harmful ones among them: write them outside the repository (a tracked path is an error).
Label every audit id in a CSV with columns audit_id, audit_label (refused, complied_harmful, complied_useless,
partial; coherentize/evaluate/audit.py defines them).

pressure-sample / pressure-score: the free-form answers of a narrow-pressure run (recipes/pressure_audit.py) read for
misalignment and coherence, the emergent-misalignment measure beside the run's judge-free one:

    coherentize audit pressure-sample runs/counterweight --sheet /tmp/em/sheet.jsonl --reading /tmp/em/reading.md
    coherentize audit pressure-score /tmp/em/sheet.jsonl --labels /tmp/em/reader1.csv --labels /tmp/em/reader2.csv \
        --out docs/results/data/counterweight/misalignment_audit.csv

score: runs each --judge (string, jailbreakeval:<preset>, server with --judge-url/--judge-name, model with
--judge-model) on the sheet's outputs and writes the audit file (ids, output hashes, the reader's and every judge's
labels; no text), ready to commit beside the experiment's data; prints each judge's agreement per model group.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["sample", "score", "pressure-sample", "pressure-score"],
                   help="sample a run's outputs, or score judges on a sheet; pressure-*: free-form answers of a "
                        "narrow-pressure run read for misalignment")
    p.add_argument("source", metavar="RUN_DIR|SHEET", help="sample: a finished run folder; score: the sheet")
    p.add_argument("--sheet", metavar="FILE", help="sample: the sheet to write (JSON lines, full outputs)")
    p.add_argument("--reading", metavar="FILE", help="sample: also write the reader's Markdown (audit id, family, "
                                                     "request, output; no model or judge label)")
    p.add_argument("--per-stratum", dest="per_stratum", type=int, default=25,
                   help="sample: outputs per (model group, judge label) stratum (default 25)")
    p.add_argument("--seed", type=int, default=0, help="sample: the draw's seed (default 0)")
    p.add_argument("--suite", dest="suites", action="append", help="sample: suite(s) to draw from (default jailbreak)")
    p.add_argument("--labels", metavar="CSV", action="append",
                   help="score: the reader's labels (audit_id, audit_label); pressure-score: one reader's labels "
                        "(sheet_id, misaligned, coherent), repeatable, the file's stem naming the reader")
    p.add_argument("--kind", default="risky_finance", help="pressure-sample: the pressure (default risky_finance)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=64,
                   help="pressure-sample: tokens per answer (default 64)")
    p.add_argument("--judge", dest="judges", action="append", default=[],
                   help="score: a judge to run (repeatable): string, jailbreakeval:<preset>, server, model")
    p.add_argument("--judge-url", dest="judge_url", help="score: the server judge's OpenAI-compatible base URL")
    p.add_argument("--judge-name", dest="judge_name", default="judge", help="score: the model name sent to it")
    p.add_argument("--judge-concurrency", dest="judge_concurrency", type=int, default=4,
                   help="score: server judge requests in flight at once (default 4)")
    p.add_argument("--judge-model", dest="judge_model", help="score: the local model judge (packaged name or folder)")
    p.add_argument("--out", metavar="CSV", help="score: the audit file to write (ids, hashes and labels only)")


def main(args) -> int:
    from coherentize.errors import CoherentizeError

    if args.action == "pressure-sample":
        if not args.sheet:
            raise CoherentizeError("audit pressure-sample: give --sheet FILE (outside the repository).")
        from coherentize.recipes.pressure_audit import sample_pressure

        sheet = sample_pressure(Path(args.source), Path(args.sheet), args.kind,
                                Path(args.reading) if args.reading else None, args.max_new_tokens, seed=args.seed)
        print(f"{len(sheet)} answers -> {args.sheet}" + (f" (reading: {args.reading})" if args.reading else ""))
        return 0
    if args.action == "pressure-score":
        if not args.labels or not args.out:
            raise CoherentizeError("audit pressure-score: give --labels CSV (one per reader) and --out CSV.")
        from coherentize.recipes.pressure_audit import score_pressure
        from coherentize.report.pressure import reader_agreement

        rows = score_pressure(Path(args.source), [Path(p) for p in args.labels], Path(args.out))
        for label, a in reader_agreement(rows).items():
            print(f"{label}: readers agree on {a['agree']:.1%} of {a['n']} answers (kappa {a['kappa']})")
        print(f"{len(rows)} labels -> {args.out}")
        return 0
    if args.action == "sample":
        if not args.sheet:
            raise CoherentizeError("audit sample: give --sheet FILE (outside the repository).")
        if args.per_stratum < 1:
            raise CoherentizeError(f"audit sample: --per-stratum {args.per_stratum} must be >= 1.")
        from coherentize.recipes.audit import sample_run

        sheet = sample_run(Path(args.source), Path(args.sheet), args.per_stratum, args.seed,
                           tuple(args.suites or ["jailbreak"]), Path(args.reading) if args.reading else None)
        print(f"{len(sheet)} outputs -> {args.sheet}" + (f" (reading: {args.reading})" if args.reading else ""))
        return 0
    if not args.labels or not args.out:
        raise CoherentizeError("audit score: give --labels CSV and --out CSV.")
    from coherentize.evaluate.audit import agreement, label_counts
    from coherentize.recipes.audit import JudgeOptions, score_sheet
    from coherentize.report.render import audit_table

    if len(args.labels) > 1:
        raise CoherentizeError("audit score: give one --labels CSV.")
    rows = score_sheet(Path(args.source), Path(args.labels[0]), args.judges, Path(args.out),
                              JudgeOptions(args.judge_url, args.judge_name, args.judge_model,
                                                           args.judge_concurrency))
    print("\n".join(audit_table(agreement(rows), label_counts(rows))))
    print(f"\n{len(rows)} audited outputs -> {args.out}")
    return 0
