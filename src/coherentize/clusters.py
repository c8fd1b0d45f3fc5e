"""Prompt clusters: one anchor (clean) prompt and its variations, stored one cluster per JSONL line.

Schema of a line (fields other than ``id``, ``anchor`` and ``variations`` are optional)::

    {"id": "capital-fr",
     "anchor": "What is the capital of France?",            # a string, or chat messages [{"role", "content"}]
     "variations": ["Q: capital of France?\\nA:",            # a string, or {"prompt": ..., "family": ...}
                    {"prompt": "I think it's Lyon. What is the capital of France?", "family": "opinion_cue"}],
     "continuations": ["The capital of France is Paris."],  # shared responses scored under every member
     "tags": {"split": "train", "topic": "geography"}}

Strings are raw text for base models and a single user message for chat models. Validation is strict: every
malformed line raises one CoherentizeError naming the file and line. A cluster with no variation (a cluster of one)
is an error unless ``min_members`` handling is set to ``"skip"``, in which case it is dropped and counted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from coherentize.chat import Prompt, prompt_text
from coherentize.errors import CoherentizeError, not_utf8, read_text  # noqa: F401  (read_text: re-exported)

ANCHOR_FAMILY = "anchor"


@dataclass(frozen=True)
class Variation:
    prompt: Prompt
    family: str = "unspecified"


@dataclass
class Cluster:
    id: str
    anchor: Prompt
    variations: list[Variation]
    continuations: list[str] = field(default_factory=list)
    tags: dict = field(default_factory=dict)

    @property
    def members(self) -> list[Prompt]:
        """Anchor first, then the variations."""
        return [self.anchor] + [v.prompt for v in self.variations]

    @property
    def families(self) -> list[str]:
        return [ANCHOR_FAMILY] + [v.family for v in self.variations]

    @property
    def split(self) -> str | None:
        return self.tags.get("split")

    def to_json(self) -> dict:
        out = {
            "id": self.id,
            "anchor": self.anchor,
            "variations": [{"prompt": v.prompt, "family": v.family} for v in self.variations],
        }
        if self.continuations:
            out["continuations"] = list(self.continuations)
        if self.tags:
            out["tags"] = dict(self.tags)
        return out


@dataclass
class LoadReport:
    """What load_clusters kept and skipped."""

    kept: int = 0
    skipped_too_small: int = 0


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object (or not UTF-8) is an
    error."""
    path = Path(path)
    if not path.is_file():
        raise CoherentizeError(f"{path}: file not found. Check the path (it is read as JSON Lines, one object a line).")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, lineno, e) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CoherentizeError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
            if not isinstance(obj, dict):
                raise CoherentizeError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
            yield lineno, obj


def read_checked_jsonl(path: str | os.PathLike, check, id_of=lambda item: item["id"]) -> list:
    """Every line of a JSON Lines file through check(obj, "path:line") (which raises a CoherentizeError naming that
    place, or returns the item), ids (id_of) unique within the file: the readers of the packaged item files."""
    out, seen = [], set()
    for lineno, obj in read_jsonl(path):
        item = check(obj, f"{path}:{lineno}")
        if id_of(item) in seen:
            raise CoherentizeError(f"{path}:{lineno}: id {id_of(item)!r} appears twice.")
        seen.add(id_of(item))
        out.append(item)
    return out


def parse_prompt(value, where: str) -> Prompt:
    """Validate one prompt: a non-empty string or a non-empty list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise CoherentizeError(f"{where}: empty prompt. Give non-empty text.")
        return value
    if isinstance(value, list) and value:
        for i, m in enumerate(value):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise CoherentizeError(f"{where}: message {i} must be an object with string 'role' and 'content'.")
            if m["role"] not in ("system", "user", "assistant"):
                raise CoherentizeError(f"{where}: message {i} has role {m['role']!r}; use system, user or assistant.")
            if not m["content"].strip():
                raise CoherentizeError(f"{where}: message {i} has empty content.")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise CoherentizeError(f"{where}: a prompt must be a non-empty string or a list of chat messages.")


def parse_cluster(obj: dict, where: str) -> Cluster:
    known = {"id", "anchor", "variations", "continuations", "tags"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise CoherentizeError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(known)}.")
    cid = obj.get("id")
    if not isinstance(cid, (str, int)) or (isinstance(cid, str) and not cid.strip()):
        raise CoherentizeError(f"{where}: missing or empty 'id' (a string naming the cluster).")
    if "anchor" not in obj:
        raise CoherentizeError(f"{where}: missing 'anchor' (the clean prompt).")
    anchor = parse_prompt(obj["anchor"], f"{where}: anchor")
    raw_vars = obj.get("variations", [])
    if not isinstance(raw_vars, list):
        raise CoherentizeError(f"{where}: 'variations' must be a list.")
    variations = []
    for i, v in enumerate(raw_vars):
        if isinstance(v, dict):
            extra = sorted(set(v) - {"prompt", "family"})
            if extra or "prompt" not in v:
                raise CoherentizeError(f"{where}: variation {i} must be a string or {{'prompt', 'family'}}.")
            family = v.get("family", "unspecified")
            if not isinstance(family, str) or not family.strip():
                raise CoherentizeError(f"{where}: variation {i} has an empty 'family'.")
            variations.append(Variation(parse_prompt(v["prompt"], f"{where}: variation {i}"), family))
        else:
            variations.append(Variation(parse_prompt(v, f"{where}: variation {i}")))
    conts = obj.get("continuations", [])
    if not (isinstance(conts, list) and all(isinstance(c, str) and c.strip() for c in conts)):
        raise CoherentizeError(f"{where}: 'continuations' must be a list of non-empty strings.")
    tags = obj.get("tags", {})
    if not isinstance(tags, dict):
        raise CoherentizeError(f"{where}: 'tags' must be an object.")
    return Cluster(str(cid), anchor, variations, list(conts), dict(tags))


def load_clusters(
    path: str | os.PathLike, on_too_small: str = "error", report: LoadReport | None = None
) -> list[Cluster]:
    """Read and validate a clusters JSONL file.

    on_too_small: 'error' (default) raises on a cluster with no variation; 'skip' drops it and counts it in report.
    Duplicate ids are always an error (they would make train/eval overlap checks meaningless).
    """
    if on_too_small not in ("error", "skip"):
        raise ValueError(f"on_too_small must be 'error' or 'skip', not {on_too_small!r}")
    report = report if report is not None else LoadReport()
    clusters: list[Cluster] = []
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        c = parse_cluster(obj, where)
        if c.id in seen:
            raise CoherentizeError(f"{where}: duplicate cluster id {c.id!r} (first on line {seen[c.id]}). Ids must be unique.")
        seen[c.id] = lineno
        if not c.variations:
            if on_too_small == "skip":
                report.skipped_too_small += 1
                continue
            raise CoherentizeError(
                f"{where}: cluster {c.id!r} has only its anchor; a cluster needs at least one variation "
                "(or load with on_too_small='skip')."
            )
        clusters.append(c)
    if not clusters:
        raise CoherentizeError(f"{path}: no usable clusters in the file.")
    report.kept = len(clusters)
    return clusters


def write_clusters(path: str | os.PathLike, clusters: Iterable[Cluster]) -> None:
    """Write clusters atomically: a temporary file renamed into place, so no half-written file is left."""
    from coherentize.io import atomic_open

    with atomic_open(path) as f:
        for c in clusters:
            f.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")


def select_split(items: list, split: str | None) -> list:
    """The clusters (or prompt items) whose tags.split equals split (all of them when split is None)."""
    if split is None:
        return items
    return [c for c in items if c.split == split]


def normalize_text(text: str) -> str:
    """Lower-case, whitespace-collapsed text: the key used for train/eval overlap checks."""
    return " ".join(text.lower().split())


def prompt_key(prompt: Prompt) -> str:
    return normalize_text(prompt_text(prompt))
