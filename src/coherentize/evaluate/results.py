"""Writing evaluation results: one JSON (schema below) and one CSV of per-prompt records.

results.json (``SCHEMA_VERSION`` 1)::

    {"schema_version": 1,
     "model": "<name or path>", "config": {<EvalConfig fields>}, "created": "<UTC ISO time>",
     "suites": {
        "<suite>": {                      # coherence | jailbreak | framed_benign | overrefusal | sycophancy | capability | cross_context
           "<metric>": {"mean": float|null, "n": int, "ci_low": float|null, "ci_high": float|null},
           "families": {"<family>": {"<metric>": {...summary...}, ...}},    # jailbreak only
           "per_layer": [{"layer": 1, "within": .., "between": .., "separation": .., "silhouette": ..}],  # coherence
           "notes": ["..."]               # caveats, e.g. the string judge's known weaknesses
        }},
     "per_item": {"<suite>.<metric>[.<family>]": {"<item id>": float}},   # for paired before/after differences
     "overlap": {...overlap report...}}

Every summary is ``stats.summarize``: the mean with n and a 95% percentile-bootstrap CI. Rates are in [0, 1].

records.csv: one row per scored prompt — suite, id, prompt_id, family, label, value, excerpt.

Redaction rule for ``excerpt`` (no harmful completion is ever written): for a harmful request (jailbreak suite) a
complied output becomes ``[redacted: complied]`` and a refusal keeps its first 60 characters; for benign prompts
(over-refusal, sycophancy, coherence) the first 120 characters are kept. Harmful request text is never written;
rows carry its id only. Newlines are replaced by spaces.

outputs.jsonl (only with ``EvalConfig.save_outputs``): one JSON object per record holding a full output —
suite, id, prompt_id, family, label, prompt (where the probe keeps it), output. Unredacted, for judge audits; it
must stay outside the repository.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from coherentize.io import atomic_open, atomic_write

SCHEMA_VERSION = 1
REFUSAL_EXCERPT = 60
BENIGN_EXCERPT = 120
RECORD_FIELDS = ("suite", "id", "prompt_id", "family", "label", "value", "excerpt")
OUTPUT_FIELDS = ("suite", "id", "prompt_id", "family", "label", "prompt", "output")


def excerpt(output: str, harmful: bool, refused: bool | None) -> str:
    """The redacted, truncated output kept in records (see the module docstring for the rule)."""
    text = " ".join(output.split())
    if harmful:
        return text[:REFUSAL_EXCERPT] if refused else "[redacted: complied]"
    return text[:BENIGN_EXCERPT]


def write_results(results: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write results.json (without the records) and records.csv into out_dir; return both paths. With the config's
    save_outputs, also outputs.jsonl (full outputs, see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in results.items() if k != "records"}
    body.setdefault("schema_version", SCHEMA_VERSION)
    jpath, cpath = out / "results.json", out / "records.csv"
    atomic_write(jpath, json.dumps(body, indent=2, ensure_ascii=False, default=str))
    with atomic_open(cpath, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results.get("records", []):
            w.writerow({k: r.get(k, "") for k in RECORD_FIELDS})
    if (results.get("config") or {}).get("save_outputs"):
        with atomic_open(out / "outputs.jsonl", "w") as f:
            for r in results.get("records", []):
                if "output" in r:
                    row = {k: r[k] for k in OUTPUT_FIELDS if k in r}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return jpath, cpath


def read_results(path: str | os.PathLike) -> dict:
    """Load a results.json (a folder holding one, or the file)."""
    from coherentize.errors import CoherentizeError

    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise CoherentizeError(f"{p}: results file not found.")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CoherentizeError(f"{p}: not valid JSON ({e.msg}).") from None
