"""Runs of one experiment merged into one report: seeds 0-1 run today and 2-4 tomorrow, or on other machines.

Every run's report stage writes ``<out_dir>/runs.json`` (RUNS_FILE): the experiment's config, the code version,
the baseline evaluation and each arm-seed's training and evaluation folders (relative to the run folder, so a run
folder can be copied elsewhere). `merge_runs` checks that the runs are the same experiment (the same config but for
the seeds and settings that change no result, and the same code version), then writes the report of all their
arm-seeds together; a difference is one error naming the first differing field. With ``allow_differences``
(``--allow-differences``) such runs are merged all the same: the report takes the first run's config, and a note
listing every differing field goes into merged.json and MERGE_NOTES.md beside report.md.

    coherentize report runs/seeds01 runs/seeds234 --out runs/merged
    coherentize report runs/lr01 runs/lr02 --out runs/merged --allow-differences
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from coherentize.config import from_dict
from coherentize.errors import CoherentizeError
from coherentize.io import atomic_write, write_json
from coherentize.recipes.experiment_config import ExperimentConfig, report_facts
from coherentize.recipes.stages import COSMETIC_EVAL_FIELDS, COSMETIC_TRAIN_FIELDS

RUNS_FILE = "runs.json"
NOTES_FILE = "MERGE_NOTES.md"
RESULT_FREE = {"seeds", "out_dir", "jobs"}
"""Top-level config fields that may differ between merged runs (they change no arm-seed's result)."""


def write_runs_file(root: Path, config: dict, code: dict, baseline_dir: Path, runs: list[dict], organism: dict | None,
                    clusters: dict) -> Path:
    """<root>/runs.json: what a merge needs from this run, its folders relative to root."""
    def rel(p) -> str:
        return str(Path(p).resolve().relative_to(root.resolve()))

    return write_json(root / RUNS_FILE, {
        "config": config, "code": code, "baseline_dir": rel(baseline_dir), "organism": organism, "variations": clusters,
        "runs": [{**r, "train_dir": rel(r["train_dir"]), "eval_dir": rel(r["eval_dir"])} for r in runs]})


def read_runs_file(run_dir: Path) -> dict:
    path = Path(run_dir) / RUNS_FILE
    if not path.is_file():
        raise CoherentizeError(f"{run_dir}: no {RUNS_FILE}; finish the run first (coherentize run writes it with the "
                               "report).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CoherentizeError(f"{path}: not valid JSON ({e}).") from None


def eval_folders(run_dir: Path) -> tuple[dict[str, Path], dict]:
    """({"baseline" and each arm-seed's name: its evaluation folder}, runs.json's contents) of a finished run."""
    from coherentize.report.facts import run_name

    run_dir = Path(run_dir)
    info = read_runs_file(run_dir)
    folders = {"baseline": run_dir / info["baseline_dir"],
               **{run_name(r["arm"], r["seed"]): run_dir / r["eval_dir"] for r in info["runs"]}}
    return folders, info


def comparable(config: dict) -> dict:
    """The config less what may differ between merged runs: seeds, the output folder, jobs, cosmetic settings."""
    out = {k: v for k, v in config.items() if k not in RESULT_FREE}
    out["train"] = {k: v for k, v in config.get("train", {}).items() if k not in COSMETIC_TRAIN_FIELDS}
    out["eval"] = {k: v for k, v in config.get("eval", {}).items() if k not in COSMETIC_EVAL_FIELDS}
    return out


def first_difference(a, b, where: str = "") -> tuple[str, object, object] | None:
    """(field path, value in a, value in b) of the first difference between two JSON values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
            if d is not None:
                return d
        return None
    return None if a == b else (where or "(top level)", a, b)


def all_differences(a, b, where: str = "") -> list[tuple[str, object, object]]:
    """Every (field path, value in a, value in b) where two JSON values differ, in field order."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in all_differences(a.get(k), b.get(k), f"{where}.{k}" if where else k)]
    return [] if a == b else [(where or "(top level)", a, b)]


def merge_runs(run_dirs: list[str | Path], out: str | Path, allow_differences: bool = False) -> Path:
    """The report of every arm-seed of these runs together, written into out; returns report.md's path.

    allow_differences: merge runs whose config (but seeds and cosmetic settings) or code version differ from the
    first run's; the report then takes the first run's config, and every differing field is listed in merged.json
    ("differences", "notes") and in MERGE_NOTES.md beside report.md."""
    from coherentize.report import write_report

    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 1:
        raise CoherentizeError("report: give at least one run folder.")
    recs = [read_runs_file(d) for d in dirs]
    differences = []
    for d, rec in zip(dirs[1:], recs[1:]):
        diff = first_difference(comparable(recs[0]["config"]), comparable(rec["config"]))
        if diff is not None and not allow_differences:
            raise CoherentizeError(f"{d}: not the same experiment as {dirs[0]}: {diff[0]} is {diff[2]!r} there and "
                                   f"{diff[1]!r} in {dirs[0]} (only seeds, out_dir, jobs and cosmetic settings may "
                                   "differ; --allow-differences merges them all the same).")
        if rec["code"] != recs[0]["code"] and not allow_differences:
            raise CoherentizeError(f"{d}: made by coherentize {rec['code']}, {dirs[0]} by {recs[0]['code']}; runs of "
                                   "different code versions are not merged (re-run one with the other's code, or "
                                   "give --allow-differences).")
        differences += [{"run": str(d), "field": f, "value": b, "first_run_value": a}
                        for f, a, b in all_differences(comparable(recs[0]["config"]), comparable(rec["config"]))]
        differences += [{"run": str(d), "field": f"code.{f}", "value": b, "first_run_value": a}
                        for f, a, b in all_differences(recs[0]["code"], rec["code"])]
    seeds, runs, seen = [], [], {}
    for d, rec in zip(dirs, recs):
        for r in rec["runs"]:
            key = (r["arm"], r["seed"])
            if key in seen:
                raise CoherentizeError(f"{d}: {r['arm']} seed {r['seed']} is also in {seen[key]}; merge runs of "
                                       "different seeds.")
            seen[key] = d
            runs.append({**r, "train_dir": str(d / r["train_dir"]), "eval_dir": str(d / r["eval_dir"])})
            seeds += [r["seed"]] if r["seed"] not in seeds else []
    arms = recs[0]["config"]["arms"]
    runs.sort(key=lambda r: (arms.index(r["arm"]) if r["arm"] in arms else len(arms), seeds.index(r["seed"])))
    out = Path(out)
    cfg = from_dict(ExperimentConfig, {**recs[0]["config"], "seeds": seeds, "out_dir": str(out)}, where=str(dirs[0]))
    out.mkdir(parents=True, exist_ok=True)
    notes = difference_notes(differences, dirs[0])
    write_json(out / "merged.json", {"runs": [str(d) for d in dirs], "seeds": seeds, "code": recs[0]["code"],
                                     "differences": differences, "notes": notes})
    facts = dataclasses.replace(report_facts(cfg), notes=notes)
    report = write_report(out, facts, recs[0]["organism"], dirs[0] / recs[0]["baseline_dir"], runs,
                          recs[0]["variations"])
    (out / NOTES_FILE).unlink(missing_ok=True)  # a note from an earlier merge into this folder must not stay
    if notes:
        atomic_write(out / NOTES_FILE, "# Merge notes\n\n" + "".join(f"> {n}\n\n" for n in notes))
    return report


def difference_notes(differences: list[dict], first: Path) -> list[str]:
    """The merged report's note on runs that differ in more than seeds (empty when none do): every field, one line."""
    if not differences:
        return []
    fields = "; ".join(f"{d['run']}: {d['field']} is {d['value']!r} there and {d['first_run_value']!r} in {first}"
                       for d in differences)
    return [f"These runs differ in more than seeds and were merged with --allow-differences; the report's config is "
            f"{first}'s. Differing fields: {fields}."]
