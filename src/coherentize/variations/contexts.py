"""Conversation contexts put before a prompt: prior turns on unrelated topics (``history``), a persona in the system
prompt (``persona``), a different task done just before (``task``).

The contexts are written for this project (``data/contexts/contexts.jsonl``, one ``{"id", "kind", "split",
"messages"}`` a line). Each is tagged ``train`` or ``test``: the ``cross_context`` variation family draws train
contexts, the ``cross_context`` evaluation probe (evaluate/cross_context.py) test ones, so no evaluation context is
ever trained on. A prompt after a context is a list of chat messages (the context's, then the prompt's); a base model
(``prompt_format: raw``) reads it as chat.py renders messages for raw text: the contents joined by blank lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from coherentize.chat import Prompt, to_messages
from coherentize.errors import CoherentizeError
from coherentize.sources import data_path

CONTEXT_KINDS = ("history", "persona", "task")
CONTEXT_SPLITS = ("train", "test")
CONTEXT_FILE = data_path("contexts", "contexts.jsonl")


@dataclass(frozen=True)
class Context:
    """Messages that come before a prompt: a system message (persona) or finished user/assistant turns."""

    id: str
    kind: str
    split: str
    messages: tuple[dict, ...]


def _check(obj: dict, where: str) -> Context:
    for key in ("id", "kind", "split", "messages"):
        if key not in obj:
            raise CoherentizeError(f"{where}: missing {key!r}.")
    if obj["kind"] not in CONTEXT_KINDS:
        raise CoherentizeError(f"{where}: kind {obj['kind']!r} is not one of {', '.join(CONTEXT_KINDS)}.")
    if obj["split"] not in CONTEXT_SPLITS:
        raise CoherentizeError(f"{where}: split {obj['split']!r} is not one of {', '.join(CONTEXT_SPLITS)}.")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) and m["content"].strip() for m in msgs):
        raise CoherentizeError(f"{where}: 'messages' must be a non-empty list of {{'role': system|user|assistant, "
                               "'content': text}}.")
    turns = [m["role"] for m in msgs if m["role"] != "system"]
    if turns and (turns[-1] != "assistant" or any(r == turns[i - 1] for i, r in enumerate(turns) if i)):
        # the prompt follows as the next user turn: the context's turns alternate and end with the assistant
        raise CoherentizeError(f"{where}: the user/assistant turns must alternate and end with an assistant turn.")
    if any(m["role"] == "system" for m in msgs[1:]):
        raise CoherentizeError(f"{where}: a system message may only come first.")
    return Context(obj["id"], obj["kind"], obj["split"], tuple(dict(m) for m in msgs))


def read_contexts(path: str | Path = CONTEXT_FILE) -> list[Context]:
    """Every context of a contexts file, each line checked (a bad one is a CoherentizeError naming file:line)."""
    from coherentize.clusters import read_checked_jsonl

    return read_checked_jsonl(path, _check, id_of=lambda c: c.id)


@lru_cache(maxsize=4)
def contexts(split: str) -> dict[str, list[Context]]:
    """The packaged contexts of one split, by kind."""
    by_kind: dict[str, list[Context]] = {k: [] for k in CONTEXT_KINDS}
    for c in read_contexts():
        if c.split == split:
            by_kind[c.kind].append(c)
    return by_kind


def with_context(context: Context, prompt: Prompt) -> list[dict]:
    """The prompt asked after the context: its messages, then the prompt's (a system message of the prompt is
    replaced by the context's, which comes first)."""
    msgs = [dict(m) for m in context.messages]
    own = to_messages(prompt)
    if any(m["role"] == "system" for m in msgs):
        own = [m for m in own if m["role"] != "system"]
    elif own and own[0]["role"] == "system":
        msgs, own = own[:1] + msgs, own[1:]
    return msgs + own


def pick(kind_contexts: list[Context], k: int, rng: random.Random) -> list[Context]:
    """k distinct contexts drawn with rng (all of them when there are no more than k)."""
    return rng.sample(kind_contexts, min(k, len(kind_contexts)))
