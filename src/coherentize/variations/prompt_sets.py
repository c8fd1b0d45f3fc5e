"""Base-prompt files (the input of ``coherentize augment``) and the prompt sets shipped with the package.

A prompt file is JSON Lines, one base prompt a line::

    {"id": "benign-001", "prompt": "How do I boil an egg?", "tags": {"split": "train", "set": "benign"}}

``prompt`` is a string or chat messages; ``id`` (optional: a hash of the prompt is used) must be unique; ``tags`` is
carried into the cluster. Shipped sets (see ``coherentize/data/prompts/README.md``): benign, alignment, raw_text,
edgy_benign; read one with ``load_prompt_set("benign", split="train")``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from coherentize.chat import Prompt
from coherentize.clusters import parse_prompt, read_jsonl, select_split
from coherentize.errors import CoherentizeError
from coherentize.sources import data_path

PROMPT_SETS = ("benign", "alignment", "raw_text", "edgy_benign")
SPLITS = ("train", "validation", "test")


@dataclass
class PromptItem:
    """One base prompt: it becomes the anchor of a cluster with the same id and tags."""

    id: str
    prompt: Prompt
    tags: dict = field(default_factory=dict)

    @property
    def split(self) -> str | None:
        return self.tags.get("split")


def read_prompts(path: str | os.PathLike) -> list[PromptItem]:
    """Read and validate a prompt file; each mistake is one CoherentizeError naming the file and line."""
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        unknown = sorted(set(obj) - {"id", "prompt", "tags"})
        if unknown:
            raise CoherentizeError(f"{where}: unknown field(s) {unknown}; a prompt line has 'prompt', 'id' and 'tags'.")
        if "prompt" not in obj:
            raise CoherentizeError(f"{where}: missing 'prompt' (the base prompt: a string or a list of chat messages).")
        prompt = parse_prompt(obj["prompt"], f"{where}: prompt")
        pid = obj.get("id")
        if pid is None:
            pid = "p-" + hashlib.sha1(json.dumps(prompt, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        if not isinstance(pid, (str, int)) or isinstance(pid, bool) or not str(pid).strip():
            raise CoherentizeError(f"{where}: 'id' must be a non-empty string.")
        pid = str(pid)
        if pid in seen:
            raise CoherentizeError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]}). Ids must be unique.")
        seen[pid] = lineno
        tags = obj.get("tags", {})
        if not isinstance(tags, dict):
            raise CoherentizeError(f"{where}: 'tags' must be an object.")
        items.append(PromptItem(pid, prompt, dict(tags)))
    if not items:
        raise CoherentizeError(f"{path}: no prompts in the file.")
    return items


def prompt_set_path(name: str) -> Path:
    if name not in PROMPT_SETS:
        raise CoherentizeError(f"unknown prompt set {name!r}; shipped sets are {', '.join(PROMPT_SETS)}.")
    return data_path("prompts", f"{name}.jsonl")


def load_prompt_set(name: str, split: str | None = None) -> list[PromptItem]:
    """A shipped prompt set, optionally one split of it ('train', 'validation', 'test')."""
    if split is not None and split not in SPLITS:
        raise CoherentizeError(f"split {split!r}: use one of {', '.join(SPLITS)}.")
    return select_split(read_prompts(prompt_set_path(name)), split)


def resolve_input(spec: str) -> Path:
    """A prompt file path, or the name of a shipped set."""
    path = Path(spec)
    if path.exists() or spec not in PROMPT_SETS:
        return path
    return prompt_set_path(spec)
