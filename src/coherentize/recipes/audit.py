"""A judge audit of a finished experiment (evaluate/audit.py has the method): draw the sheet from its saved outputs,
then score every judge against the labels a reader gave.

    coherentize audit sample runs/x --sheet /tmp/audit/sheet.jsonl --reading /tmp/audit/reading.md
    coherentize audit score /tmp/audit/sheet.jsonl --labels /tmp/audit/labels.csv \
        --judge string --judge jailbreakeval:StringMatching-zou2023universal \
        --judge server --judge-url http://127.0.0.1:8000/v1 --judge-name qwen2.5-coder-0.5b-instruct \
        --out docs/results/data/x/judge_audit.csv

The sheet and the reading file hold harmful completions in full: they must stay outside the repository (``sample``
refuses a path inside a git work tree unless git ignores it). Only ``score``'s output (ids, hashes, labels) is meant
to be committed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from coherentize.clusters import read_jsonl
from coherentize.errors import CoherentizeError
from coherentize.evaluate import audit


def _inside_git(path: Path) -> bool:
    """Whether path would be tracked by a git work tree it lies in (inside one and not ignored)."""
    folder = path.resolve().parent
    while not folder.exists():  # the nearest existing folder above a path still to be made
        folder = folder.parent
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=False)
        if top.returncode != 0:
            return False
        ignored = subprocess.run(["git", "-C", top.stdout.strip(), "check-ignore", "-q", str(path.resolve())],
                                 capture_output=True, check=False)
        return ignored.returncode != 0
    except FileNotFoundError:  # no git on this machine: nothing to protect
        return False


def check_outside_git(path: Path, what: str) -> None:
    if _inside_git(Path(path)):
        raise CoherentizeError(f"{path}: the {what} holds full outputs (harmful completions among them); write it "
                               "outside any git work tree, or to a path git ignores.")


def run_outputs(run_dir: Path) -> tuple[dict[str, list[dict]], dict]:
    """({run name: rows of its outputs.jsonl}, the experiment's eval config) of a finished run folder."""
    from coherentize.recipes.merge import eval_folders

    folders, info = eval_folders(run_dir)
    outputs = {}
    for name, folder in folders.items():
        path = folder / "outputs.jsonl"
        if not path.is_file():
            raise CoherentizeError(f"{path}: not found; an audit needs the full outputs (run the experiment with "
                                   "--set eval.save_outputs=true).")
        outputs[name] = [row for _, row in read_jsonl(path)]
    return outputs, (info.get("config") or {}).get("eval", {})


def plain_requests(eval_cfg: dict) -> dict[str, str]:
    """{request id: request} of the experiment's harmful requests (shown to the reader beside the wrapped prompt)."""
    from coherentize.config import from_dict
    from coherentize.evaluate.suite import EvalConfig, harmful_requests

    known = {k: v for k, v in eval_cfg.items() if k in EvalConfig.__dataclass_fields__}
    return {r["id"]: r["prompt"] for r in harmful_requests(from_dict(EvalConfig, known, "eval"))}


def write_reading(sheet: list[dict], path: Path) -> Path:
    """The reader's file: each output under its audit id, with the family and the plain request; nothing else."""
    from coherentize.io import atomic_write

    parts = [f"# Judge audit: {len(sheet)} outputs\n\nLabel each one `refused`, `complied_harmful`, "
             "`complied_useless` or `partial` (definitions: coherentize/evaluate/audit.py), reading it in full.\n"]
    for r in sorted(sheet, key=lambda r: r["audit_id"]):
        parts.append(f"\n## {r['audit_id']} ({r['family']})\n\nRequest: {r['request'] or '(see prompt)'}\n\n"
                     f"Output:\n\n```text\n{r['output']}\n```\n")
    return atomic_write(Path(path), "".join(parts))


def sample_run(run_dir: Path, sheet_path: Path, per_stratum: int = 25, seed: int = 0,
               suites: tuple[str, ...] = ("jailbreak",), reading_path: Path | None = None) -> list[dict]:
    """Draw the audit sheet of a finished run (evaluate/audit.sample) and write it (and the reading file)."""
    from coherentize.io import atomic_write

    for path, what in ((sheet_path, "sheet"), (reading_path, "reading file")):
        if path is not None:
            check_outside_git(Path(path), what)
    outputs, eval_cfg = run_outputs(run_dir)
    sheet = audit.sample(outputs, per_stratum, seed, suites, plain_requests(eval_cfg))
    if not sheet:
        raise CoherentizeError(f"{run_dir}: no saved outputs of suite(s) {', '.join(suites)} to audit.")
    atomic_write(Path(sheet_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sheet))
    if reading_path is not None:
        write_reading(sheet, Path(reading_path))
    return sheet


@dataclass
class JudgeOptions:
    """How to reach the judges that ``score`` runs (the eval section's fields of the same names)."""

    judge_url: str | None = None
    judge_name: str = "judge"
    judge_model: str | None = None
    judge_concurrency: int = 4


def judge_column(kind: str, options: JudgeOptions) -> str:
    """A judge's name in the audit file: the kind, and for a model judge which model (server name or folder)."""
    if kind == "server":
        return f"server:{options.judge_name}"
    if kind == "model":
        return f"model:{Path(str(options.judge_model)).name}"
    return kind


def score_sheet(sheet_path: Path, labels_path: Path, judges: list[str], out: Path,
                options: JudgeOptions | None = None) -> list[dict]:
    """Run each judge on the sheet's outputs, join the reader's labels, write the committed audit file (no text);
    return its rows. A model judge's reply that does not follow the rubric is labelled unparsed."""
    from coherentize.evaluate.judges import ModelJudge
    from coherentize.evaluate.suite import EvalConfig, judge_of, validate

    options = options or JudgeOptions()
    sheet = [row for _, row in read_jsonl(Path(sheet_path))]
    for line, r in enumerate(sheet, 1):
        missing = [k for k in audit.SHEET_FIELDS if k not in r]
        if missing:
            raise CoherentizeError(f"{sheet_path}:{line}: fields {missing} missing (a sheet from `coherentize audit "
                                   "sample`).")
        if audit.output_hash(r["output"]) != r["output_sha256"]:
            raise CoherentizeError(f"{sheet_path}:{line}: the output does not match its output_sha256 (edited?).")
    labels = audit.read_labels(Path(labels_path), sheet)
    if not judges:
        raise CoherentizeError("audit score: name at least one --judge.")
    cfg = EvalConfig(judge_url=options.judge_url, judge_name=options.judge_name, judge_model=options.judge_model,
                     judge_concurrency=options.judge_concurrency, extra_judges=[j for j in judges if j != "string"])
    validate(cfg)  # a bad judge name or a server judge without its URL is one error before any judging
    prompts = [r["request"] or r["prompt"] for r in sheet]
    outputs = [r["output"] for r in sheet]
    results: dict[str, list[bool | None]] = {}
    for kind in judges:
        judge = judge_of(kind, cfg)
        labels_of = judge.judge(prompts, outputs)
        if isinstance(judge, ModelJudge):  # a reply off the rubric is "unparsed" here, not the string judge's label
            labels_of = [lab if parsed is not None else None for lab, parsed in zip(labels_of, judge.last)]
        results[judge_column(kind, options)] = labels_of
    rows = audit.audit_rows(sheet, labels, results)
    audit.write_audit(rows, Path(out))
    return rows
