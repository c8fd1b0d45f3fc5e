"""The one client for OpenAI-compatible chat-completions servers (vLLM, llama.cpp, OpenAI, ...), used by the
paraphraser (variations/paraphrase.py) and the rubric judge (evaluate/judges.py).

    client = ChatClient(ServerConfig(base_url="http://127.0.0.1:8000/v1", model="m", api_key_env="MY_KEY"))
    client.complete([{"role": "user", "content": "Hi"}])            # one request
    client.complete_many([messages_a, messages_b], seeds=[1, 2])     # at most `concurrency` in flight, in order

Standard library only (urllib), so no extra dependency. The API key is read from the environment variable named by
``api_key_env`` at request time (sent as a Bearer token when set; never stored in a config or a results file).
Connection errors, timeouts, 429 and 5xx are retried: the wait is the server's ``Retry-After`` when it sends one
(seconds or an HTTP date, capped at ``max_retry_after_s``), else ``backoff_s`` doubled each retry. Any other HTTP
error (401, 404, ...) is not retried. Every failure is one CoherentizeError naming the URL.
"""

from __future__ import annotations

import email.utils
import json
import os
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


@dataclass
class ServerConfig:
    """An OpenAI-compatible chat-completions server (vLLM, llama.cpp, OpenAI, ...)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Base URL including the API prefix; requests go to {base_url}/chat/completions."""
    model: str = "default"
    """Model name sent with every request."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (sent as a Bearer token when set; None: never send one)."""
    concurrency: int = 4
    """Most requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds to wait for one response."""
    retries: int = 3
    """Extra tries after a connection error, timeout, 429 or 5xx."""
    backoff_s: float = 1.0
    """Wait before the first retry when the server sends no Retry-After; doubles each retry."""
    max_retry_after_s: float = 120.0
    """Longest wait honoured from a Retry-After header."""
    max_tokens: int = 96
    """Most tokens per completion."""
    temperature: float = 0.7
    """Sampling temperature; a request may send its own seed."""

    def __post_init__(self):
        if not re.match(r"^https?://", self.base_url or ""):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and timeout_s > 0")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header value: delta-seconds or an HTTP date; None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ChatClient:
    """POST {base_url}/chat/completions with retries, Retry-After and bounded concurrency; see ServerConfig.

    purpose names the server in error messages (e.g. "paraphrase server", "judge server")."""

    def __init__(self, cfg: ServerConfig, purpose: str = "server", hint: str = "check the URL and model name"):
        self.cfg, self.purpose, self.hint = cfg, purpose, hint
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict], seed: int | None = None, max_tokens: int | None = None,
                 temperature: float | None = None) -> str:
        """One chat completion (retried as the module docstring says); returns the message content."""
        body = {"model": self.cfg.model, "messages": messages,
                "max_tokens": self.cfg.max_tokens if max_tokens is None else max_tokens,
                "temperature": self.cfg.temperature if temperature is None else temperature}
        if seed is not None:
            body["seed"] = seed
        data = json.dumps(body).encode("utf-8")
        last, wait = "", None
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                backoff = self.cfg.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(wait, self.cfg.max_retry_after_s) if wait is not None else backoff)
            wait = None
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {detail}"
                    wait = retry_after_seconds(e.headers.get("Retry-After") if e.headers else None)
                    continue
                hint = (f"check the API key in ${self.cfg.api_key_env}" if e.code in (401, 403) else self.hint)
                raise CoherentizeError(f"{self.purpose} {self.url}: HTTP {e.code}: {detail} ({hint}).") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, HTTPException) as e:
                last = str(getattr(e, "reason", e)) or type(e).__name__
                continue
            try:
                return json.loads(payload)["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise CoherentizeError(
                    f"{self.purpose} {self.url}: the response is not an OpenAI chat completion: {payload[:200]!r}."
                ) from None
        raise CoherentizeError(
            f"could not reach the {self.purpose} at {self.url} after {self.cfg.retries + 1} tries ({last}). "
            "Start the server, or fix its URL (it includes the /v1 prefix)."
        )

    def complete_many(self, conversations: Sequence[list[dict]], seeds: Sequence[int | None] | None = None,
                      **kw) -> list[str]:
        """complete() for each conversation, at most cfg.concurrency in flight; results in input order."""
        seeds = list(seeds) if seeds is not None else [None] * len(conversations)
        if not conversations:
            return []
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(conversations))) as pool:
            return list(pool.map(lambda ms: self.complete(ms[0], ms[1], **kw), zip(conversations, seeds)))
