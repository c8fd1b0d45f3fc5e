"""An experiment's per-item results in a form small enough to commit, and read back to recompute every figure.

Every report writes its data beside it (``<out_dir>/data/``); ``export_run`` copies a finished run's data folder to
``docs/results/data/<experiment>/`` and ``coherentize report --from-data`` recomputes that section of
docs/results.md from these files alone (report/section.py).

Format (``FORMAT`` 1), one folder:

- ``manifest.json``: {"format": 1, "experiment", "model", "judge" (the refusal judge's name), "arms", "seeds",
  "n_boot", "runs": [{"name": "baseline"}, {"name": "<arm>-seed<s>", "arm", "seed"}, ...], "code" (package version
  and source hash from summary.json), "stage_seconds", "jailbreak_sources" (whence the families' attack kinds; absent
  in older folders: the default sources)}.
- ``items.csv``: run, metric, item, value: every run's ``per_item`` from results.json (the numbers behind every
  figure: labels as 0/1, margins, scores, divergences), a value written as Python's repr of the float (it reads
  back bit for bit).
- ``labels.csv``: run, suite, id, prompt_id, family, label, value: the judge's label of every scored output
  (records.csv without its excerpt column).

- A grid still running, or continued in later sessions (``coherentize run --data-into DIR``): the manifest's
  "planned" lists every arm-seed of the grid, "runs" only the finished ones, "seeds" the seeds they cover, and each
  arm-seed entry carries the "code" it ran with (``accumulate``).
- The manifest's "organism" (when the experiment built one): its recipe, pair counts, its own checks before and after
  and, when its recipe was chosen on validation, every candidate's validation figures (report/render.py's
  ``ORGANISM_FIELDS``).

- ``selection.json`` (optional, written when the experiment chose its learning rates on validation): each selecting
  arm's chosen rate and every candidate's validation scores (numbers only; the run's selection.json).

- ``pressure_items.csv`` (optional, written when the experiment applied narrow pressures, recipes/pressure.py):
  every measured item of every pressure, condition, seed and item set, before and after the narrow fine-tune
  (report/pressure.py reads and summarizes it).
- ``misalignment_audit.csv`` (optional, added by ``coherentize audit pressure-score``): free-form answers of the
  pressure's start and fine-tuned models read for misalignment and coherence, ids, answer hashes and every reader's
  labels (report/pressure.py ``read_audit``); the section adds them to the pressure's measures.
- ``judge_audit.csv`` (optional, added by ``coherentize audit score``): a judge audit of the experiment's outputs,
  ids, output hashes and labels (evaluate/audit.py); the section then shows each judge's agreement per model.

No text is kept: neither a prompt, nor a request, nor any excerpt of an output, only ids, labels and numbers, so a
harmful request or a complied answer can never reach the repository through this folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from coherentize.errors import CoherentizeError
from coherentize.io import atomic_open, atomic_write, csv_rows
from coherentize.report.facts import run_name

FORMAT = 1
ITEM_FIELDS = ("run", "metric", "item", "value")
LABEL_FIELDS = ("run", "suite", "id", "prompt_id", "family", "label", "value")
FILES = ("manifest.json", "items.csv", "labels.csv")
AUDIT_FILE = "judge_audit.csv"
PRESSURE_FILE = "pressure_items.csv"
MISALIGNMENT_FILE = "misalignment_audit.csv"
SELECTION_FILE = "selection.json"


def collect(baseline_dir: Path, runs: list[dict], manifest: dict) -> dict:
    """{"manifest", "items": {run name: per_item}, "labels": {run name: [label rows]}} from the evaluation folders
    (results.json, records.csv). runs: [{"arm", "seed", "eval_dir"}]; manifest: the fields of the experiment
    (experiment, model, arms, seeds, n_boot, code, stage_seconds), completed here with "format", "judge", "runs"."""
    folders = {"baseline": Path(baseline_dir), **{run_name(r["arm"], r["seed"]): Path(r["eval_dir"]) for r in runs}}
    items, labels, judge = {}, {}, None
    for name, folder in folders.items():
        res = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        judge = judge or res.get("judge", {}).get("name")
        items[name] = res.get("per_item", {})
        records = folder / "records.csv"
        rows = csv_rows(records, LABEL_FIELDS[1:], extra="excerpt") if records.is_file() else ()
        labels[name] = [{k: r[k] for k in LABEL_FIELDS[1:]} for _, r in rows]
    entries = [{"name": "baseline"}] + [{"name": run_name(r["arm"], r["seed"]), "arm": r["arm"], "seed": r["seed"]}
                                        for r in runs]
    return {"manifest": {"format": FORMAT, **manifest, "judge": judge or "string", "runs": entries},
            "items": items, "labels": labels}


def write(data: dict, dest: Path) -> Path:
    """Write the three files into dest (replacing what is there), and selection.json when data has a "selection";
    return dest."""
    dest = Path(dest)
    atomic_write(dest / "manifest.json", json.dumps(data["manifest"], indent=1, default=str) + "\n")
    with atomic_open(dest / "items.csv", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(ITEM_FIELDS)
        for run, per_item in data["items"].items():
            for metric, vals in per_item.items():
                for item, v in vals.items():
                    w.writerow([run, metric, item, repr(float(v)) if v is not None else ""])
    with atomic_open(dest / "labels.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LABEL_FIELDS, lineterminator="\n")
        w.writeheader()
        for run, rows in data["labels"].items():
            for r in rows:
                w.writerow({"run": run, **r})
    if data.get("selection"):
        atomic_write(dest / SELECTION_FILE, json.dumps(data["selection"], indent=1) + "\n")
    if data.get("pressure"):
        from coherentize.report.pressure import write_items

        write_items(data["pressure"], dest / PRESSURE_FILE)
    return dest


def read_selection(folder: Path) -> dict | None:
    """The folder's selection.json (None when it has none); invalid JSON is one error naming the file."""
    path = Path(folder) / SELECTION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CoherentizeError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None


def read(folder: Path) -> dict:
    """The data written by ``write`` (the same dict); a missing file or an unknown run is one clear error."""
    folder = Path(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise CoherentizeError(f"{folder / name}: not found (a results data folder holds {', '.join(FILES)}).")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CoherentizeError(f"{folder / 'manifest.json'}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if manifest.get("format") != FORMAT:
        raise CoherentizeError(f"{folder / 'manifest.json'}: format {manifest.get('format')!r}, expected {FORMAT}.")
    names = [r["name"] for r in manifest["runs"]]
    items: dict = {n: {} for n in names}
    labels: dict = {n: [] for n in names}
    for path, fields, sink in ((folder / "items.csv", ITEM_FIELDS, items),
                               (folder / "labels.csv", LABEL_FIELDS, labels)):
        for line, r in csv_rows(path, fields):
            if r["run"] not in sink:
                raise CoherentizeError(f"{path}:{line}: run {r['run']!r} is not in manifest.json's runs.")
            if sink is labels:
                labels[r["run"]].append({k: r[k] for k in fields[1:]})
                continue
            try:
                value = float(r["value"]) if r["value"] != "" else None
            except (TypeError, ValueError):
                raise CoherentizeError(f"{path}:{line}: value {r['value']!r} is not a number.") from None
            items[r["run"]].setdefault(r["metric"], {})[r["item"]] = value
    data = {"manifest": manifest, "items": items, "labels": labels}
    if (folder / SELECTION_FILE).is_file():
        data["selection"] = read_selection(folder)
    if (folder / PRESSURE_FILE).is_file():
        from coherentize.report.pressure import read_items

        data["pressure"] = read_items(folder / PRESSURE_FILE)
    if (folder / MISALIGNMENT_FILE).is_file():
        from coherentize.report.pressure import read_audit

        data["misalignment"] = read_audit(folder / MISALIGNMENT_FILE)
    if (folder / AUDIT_FILE).is_file():
        from coherentize.evaluate.audit import read_audit

        data["audit"] = read_audit(folder / AUDIT_FILE)
        unknown = sorted({r["run"] for r in data["audit"]} - set(names))
        if unknown:
            raise CoherentizeError(f"{folder / AUDIT_FILE}: run {unknown[0]!r} is not in manifest.json's runs.")
    return data


MATCHING = ("experiment", "model", "judge", "format")
"""Manifest fields on which a data folder and the results written into it (``accumulate``) must agree."""


def accumulate(dest: Path, data: dict) -> Path:
    """Write data into dest as ``write`` does, keeping each arm-seed already in dest that data lacks: the folder of a
    grid continued in another session or on another machine (``coherentize run --data-into``). An arm-seed in both
    is data's (the newer); the baseline is data's when it has one. Each arm-seed entry keeps the "code" it ran with,
    "planned" becomes the union of both grids, "seeds" the seeds of the runs present, "stage_seconds" the union of both
    sessions' stage times. A folder of another experiment,
    model or judge is one error naming the field, before anything is written."""
    dest = Path(dest)
    man = dict(data["manifest"])
    runs = [dict(r, code=r.get("code") or man.get("code")) for r in man["runs"]]
    items, labels = dict(data["items"]), dict(data["labels"])
    planned = list(man.get("planned") or [r["name"] for r in runs if "arm" in r])
    if (dest / "manifest.json").is_file():
        old = read(dest)
        om = old["manifest"]
        for k in MATCHING:
            if om.get(k) != man.get(k):
                raise CoherentizeError(f"{dest / 'manifest.json'}: {k} is {om.get(k)!r}, these results' {k} is "
                                       f"{man.get(k)!r}; write them into another folder.")
        have = {r["name"] for r in runs}
        for r in om["runs"]:
            if r["name"] in have:
                continue
            runs.append(dict(r, code=r.get("code") or om.get("code")))
            items[r["name"]], labels[r["name"]] = old["items"][r["name"]], old["labels"][r["name"]]
        planned = list(dict.fromkeys(planned + list(om.get("planned") or [r["name"] for r in om["runs"]
                                                                            if "arm" in r])))
        # each stage's wall time as recorded by the session that ran it (this one's win where both have it)
        man["stage_seconds"] = {**(om.get("stage_seconds") or {}), **(man.get("stage_seconds") or {})}
    order = {a: i for i, a in enumerate(dict.fromkeys(list(man.get("arms") or []) +
                                                       [r["arm"] for r in runs if "arm" in r]))}
    runs.sort(key=lambda r: (0, 0, 0) if "arm" not in r else (1, order[r["arm"]], r["seed"]))
    arm_runs = [r for r in runs if "arm" in r]
    man.update(runs=runs, planned=planned, arms=list(order), seeds=sorted({r["seed"] for r in arm_runs}))
    out = {"manifest": man, "items": items, "labels": labels}
    if data.get("selection"):
        out["selection"] = data["selection"]
    if data.get("pressure"):  # the narrow pressures' records: this session's win where both sessions have one
        from coherentize.report.pressure import merge_items, read_items

        earlier = read_items(dest / PRESSURE_FILE) if (dest / PRESSURE_FILE).is_file() else []
        out["pressure"] = merge_items(earlier, data["pressure"])
    return write(out, dest)  # an earlier selection.json (or judge_audit.csv) stays when data brings none


def export_run(run_dir: Path, dest: Path) -> Path:
    """Copy a finished run's data folder (``<run_dir>/data``, written by its report) to dest; return dest."""
    src = Path(run_dir) / "data"
    if not (src / "manifest.json").is_file():
        raise CoherentizeError(f"{src}: no results data here; run the experiment's report stage with this version "
                               "of coherentize first (the report writes it).")
    read(src)  # check it reads back before anything is copied
    dest = Path(dest)
    for name in FILES:
        atomic_write(dest / name, (src / name).read_bytes())
    return dest
