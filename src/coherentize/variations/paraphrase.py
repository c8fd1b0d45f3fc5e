"""LLM paraphrasing: ask a model to rewrite a prompt N ways, with a local transformers model or an
OpenAI-compatible chat-completions server.

A rewrite is a ``RewriteJob``: the text, one style instruction drawn from STYLES, and a seed, all a pure function of
(prompt, seed). A back end is any callable ``jobs -> raw completions`` (one string per job, in order);
``clean_rewrite`` turns a raw completion into a variation or None. Variations are tagged with the family
``paraphrase``.

- ``LocalParaphraser(model, tokenizer)``: batched generation through ``coherentize.generation.generate``; greedy by
  default, so the distinct style instructions (not sampling) make the N rewrites differ and runs are reproducible.
- ``ServerParaphraser(ServerConfig(base_url=..., model=...))``: the project's one server client
  (``coherentize.server.ChatClient``): at most ``concurrency`` requests in flight, retries honouring Retry-After,
  the API key read from the environment variable ``api_key_env``. Each job sends its own seed, but a server need
  not be deterministic across request orders: llama.cpp reuses the previous request's KV cache for a shared prefix,
  so with ``concurrency`` > 1 a sampled rewrite can change from run to run; use ``concurrency=1`` (or temperature 0)
  where the variations must repeat exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from coherentize.server import ChatClient, ServerConfig

__all__ = ["FAMILY", "STYLES", "RewriteJob", "rewrite_jobs", "clean_rewrite", "LocalParaphraser", "ServerConfig",
           "ServerParaphraser"]

FAMILY = "paraphrase"

STYLES = (
    "Use different words but keep the meaning.",
    "Make it more formal.",
    "Make it more casual.",
    "Make it shorter.",
    "Use simpler words.",
    "Change the sentence structure.",
    "Write it as a native speaker would say it out loud.",
    "Make it slightly more polite.",
)

INSTRUCTION = (
    "Rewrite the following request. {style} Keep its meaning; do not answer it. "
    "Reply with the rewritten request only.\n\nRequest: {text}"
)
SYSTEM = "You rewrite requests in other words. You never answer them."
# Two worked examples: without them a small model (SmolLM2-135M) answers the request instead of rewriting it.
FEW_SHOT = (
    ("What time is it in Tokyo right now?", STYLES[0], "Could you tell me the current time in Tokyo?"),
    ("Please recommend a book about the history of Rome.", STYLES[2],
     "Got any good books on Roman history to suggest?"),
)


@dataclass(frozen=True)
class RewriteJob:
    text: str
    style: str
    seed: int

    def messages(self) -> list[dict]:
        """The chat request: system message, the worked examples as earlier turns, then this text."""
        msgs = [{"role": "system", "content": SYSTEM}]
        for text, style, answer in FEW_SHOT:
            msgs += [{"role": "user", "content": INSTRUCTION.format(style=style, text=text)},
                     {"role": "assistant", "content": answer}]
        return msgs + [{"role": "user", "content": INSTRUCTION.format(style=self.style, text=self.text)}]

    def raw_text(self) -> str:
        """The same request as plain text for a base model, which continues after 'Rewritten request:'."""
        shots = [INSTRUCTION.format(style=st, text=t) + f"\nRewritten request: {a}" for t, st, a in FEW_SHOT]
        return "\n\n".join(shots + [INSTRUCTION.format(style=self.style, text=self.text) + "\nRewritten request:"])


def rewrite_jobs(text: str, n: int, seed: int) -> list[RewriteJob]:
    """n jobs for one text: distinct styles while they last, each with its own seed."""
    rng = random.Random(f"{seed}\x1f{FAMILY}\x1f{text}")
    styles = rng.sample(STYLES, len(STYLES))
    return [RewriteJob(text, styles[i % len(styles)], rng.randrange(2**31)) for i in range(n)]


_PREAMBLE = re.compile(
    r"^(sure|certainly|of course|okay|ok|here(?:'s| is| are)|rewritten|rephrased|paraphrased|revised)\b[^\n]*:\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^(rewritten request|request|rewrite|paraphrase|answer)\s*:\s*", re.IGNORECASE)


def clean_rewrite(raw: str) -> str | None:
    """The rewritten request inside a completion: strip a 'Sure, here is...:' preamble, a label, surrounding
    quotes, and anything after the first blank line. None if nothing is left."""
    text = raw.strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    text = _LABEL.sub("", text, count=1).strip()
    text = text.split("\n\n", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    text = text.strip("“”").strip()
    return text or None


class LocalParaphraser:
    """Rewrites with a local transformers model, in batches."""

    def __init__(self, model, tokenizer, chat: bool | None = None, max_new_tokens: int = 64, batch_size: int = 16,
                 temperature: float = 0.0):
        from coherentize.chat import is_chat_model

        self.model, self.tokenizer = model, tokenizer
        self.chat = is_chat_model(tokenizer) if chat is None else chat
        self.max_new_tokens, self.batch_size, self.temperature = max_new_tokens, batch_size, temperature

    def __call__(self, jobs: Sequence[RewriteJob]) -> list[str]:
        from coherentize.generation import generate

        if not jobs:
            return []
        prompts = [j.messages() if self.chat else j.raw_text() for j in jobs]
        return generate(
            self.model, self.tokenizer, prompts, chat=self.chat, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, do_sample=self.temperature > 0, temperature=self.temperature or 1.0,
            seed=jobs[0].seed,
        )


class ServerParaphraser:
    """Rewrites through an OpenAI-compatible server, with the project's one server client (coherentize.server)."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.client = ChatClient(cfg, purpose="paraphrase server", hint="check --server-model and --server-url")
        self.url = self.client.url

    def complete(self, messages: list[dict], seed: int | None = None) -> str:
        """One chat completion, with retries and backoff; returns the message content."""
        return self.client.complete(messages, seed)

    def __call__(self, jobs: Sequence[RewriteJob]) -> list[str]:
        return self.client.complete_many([j.messages() for j in jobs], [j.seed for j in jobs])
