"""LLM paraphrasing: ask a model to rewrite a prompt N ways, with a local transformers model or an
OpenAI-compatible chat-completions server.

A rewrite is a ``RewriteJob``: the text, one style instruction drawn from STYLES, and a seed, all a pure function of
(prompt, seed). A back end is any callable ``jobs -> raw completions`` (one string per job, in order);
``clean_rewrite`` turns a raw completion into a variation or None. Variations are tagged with the family
``paraphrase``.

- ``LocalParaphraser(model, tokenizer)``: batched generation through ``coherentize.generation.generate``; greedy by
  default, so the distinct style instructions (not sampling) make the N rewrites differ and runs are reproducible.
- ``ServerParaphraser(ServerConfig(base_url=..., model=...))``: POST ``{base_url}/chat/completions`` with the
  standard library (no extra dependency), at most ``concurrency`` requests in flight, retries with exponential
  backoff on connection errors, timeouts, 429 and 5xx, the API key read from the environment variable
  ``api_key_env``. A server that cannot be reached after the retries is one CoherentizeError.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from typing import Sequence

from coherentize.errors import CoherentizeError

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


@dataclass
class ServerConfig:
    """An OpenAI-compatible chat-completions server (vLLM, llama.cpp, OpenAI, ...)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Base URL including the API prefix; requests go to {base_url}/chat/completions."""
    model: str = "default"
    """Model name sent with every request."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (sent as a Bearer token when set)."""
    concurrency: int = 4
    """Most requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds to wait for one response."""
    retries: int = 3
    """Extra tries after a connection error, timeout, 429 or 5xx."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubles each retry."""
    max_tokens: int = 96
    """Most tokens per rewrite."""
    temperature: float = 0.7
    """Sampling temperature; each job sends its own seed."""

    def __post_init__(self):
        if not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and timeout_s > 0")


class ServerParaphraser:
    """Rewrites through an OpenAI-compatible server; see ServerConfig."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict], seed: int | None = None) -> str:
        """One chat completion, with retries and backoff; returns the message content."""
        body = {"model": self.cfg.model, "messages": messages, "max_tokens": self.cfg.max_tokens,
                "temperature": self.cfg.temperature}
        if seed is not None:
            body["seed"] = seed
        data = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {detail}"
                    continue
                hint = (f"check the API key in ${self.cfg.api_key_env}" if e.code in (401, 403)
                        else "check --server-model and --server-url")
                raise CoherentizeError(f"paraphrase server {self.url}: HTTP {e.code}: {detail} ({hint}).") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, HTTPException) as e:
                last = str(getattr(e, "reason", e)) or type(e).__name__
                continue
            try:
                return json.loads(payload)["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise CoherentizeError(
                    f"paraphrase server {self.url}: the response is not an OpenAI chat completion: {payload[:200]!r}."
                ) from None
        raise CoherentizeError(
            f"could not reach the paraphrase server at {self.url} after {self.cfg.retries + 1} tries ({last}). "
            "Start the server, or fix --server-url (it includes the /v1 prefix)."
        )

    def __call__(self, jobs: Sequence[RewriteJob]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(lambda j: self.complete(j.messages(), j.seed), jobs))
