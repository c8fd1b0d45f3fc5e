"""Paraphraser: jobs, cleaning, the local back end on a tiny model, the server client's errors and retries.

The client's behaviour against a real llama.cpp server is in test_variation_server.py; here a standard-library HTTP
server on loopback answers with fixed status codes to exercise retries and error messages in milliseconds.
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coherentize.errors import CoherentizeError
from coherentize.variations.paraphrase import (
    STYLES,
    LocalParaphraser,
    ServerConfig,
    ServerParaphraser,
    clean_rewrite,
    rewrite_jobs,
)


def test_rewrite_jobs_are_deterministic_with_distinct_styles():
    jobs = rewrite_jobs("How do I boil an egg?", 4, seed=0)
    assert jobs == rewrite_jobs("How do I boil an egg?", 4, seed=0)
    assert jobs != rewrite_jobs("How do I boil an egg?", 4, seed=1)
    assert len({j.style for j in jobs}) == 4 and all(j.style in STYLES for j in jobs)
    msgs = jobs[0].messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"].endswith("Request: How do I boil an egg?") and jobs[0].style in msgs[-1]["content"]
    assert jobs[0].raw_text().endswith("Request: How do I boil an egg?\nRewritten request:")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Sure! Here is the rewritten request:\n\nWhat's the way to boil an egg?", "What's the way to boil an egg?"),
        ('"How can I boil an egg?"', "How can I boil an egg?"),
        ("Rewritten request: How should I boil eggs?\n\nThis keeps the meaning.", "How should I boil eggs?"),
        ("  \n ", None),
        ("Here's a rewritten version:", None),
    ],
)
def test_clean_rewrite(raw, expected):
    assert clean_rewrite(raw) == expected


def test_local_paraphraser_batches_on_a_tiny_model(tiny_tok, tiny_lm):
    """Plumbing only (a random tiny model writes noise); the real model is in test_local_paraphraser_real_model."""
    para = LocalParaphraser(tiny_lm, tiny_tok, max_new_tokens=6, batch_size=3)
    jobs = rewrite_jobs("What is the capital of France?", 2, 0) + rewrite_jobs("Alice and Bob?", 2, 0)
    out = para(jobs)
    assert len(out) == 4 and all(isinstance(o, str) for o in out)
    assert out == para(jobs)  # greedy: reproducible


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of the server's script; records request bodies."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((body, self.headers.get("Authorization")))
        status, payload = self.server.script.pop(0) if self.server.script else (200, "ok")
        data = json.dumps({"choices": [{"message": {"content": payload}}]} if status == 200 else {"error": payload})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    srv.script, srv.requests = [], []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_server_client_retries_with_backoff_then_succeeds(scripted, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    scripted.script = [(503, "busy"), (429, "slow down"), (200, "How can I boil an egg?")]
    cfg = ServerConfig(base_url=f"http://127.0.0.1:{scripted.server_port}/v1", model="m", api_key_env="MY_KEY",
                       retries=2, backoff_s=0.05)
    t0 = time.monotonic()
    assert ServerParaphraser(cfg).complete([{"role": "user", "content": "x"}], seed=5) == "How can I boil an egg?"
    assert time.monotonic() - t0 >= 0.05 + 0.1  # waited 0.05 then 0.1
    assert len(scripted.requests) == 3
    body, auth = scripted.requests[0]
    assert body["model"] == "m" and body["seed"] == 5 and auth == "Bearer sk-test"


def test_server_client_gives_up_after_retries(scripted):
    scripted.script = [(500, "boom")] * 3
    cfg = ServerConfig(base_url=f"http://127.0.0.1:{scripted.server_port}/v1", retries=1, backoff_s=0.01)
    with pytest.raises(CoherentizeError, match=r"after 2 tries \(HTTP 500"):
        ServerParaphraser(cfg).complete([{"role": "user", "content": "x"}])
    assert len(scripted.requests) == 2


def test_server_client_does_not_retry_an_auth_error(scripted):
    scripted.script = [(401, "bad key")]
    cfg = ServerConfig(base_url=f"http://127.0.0.1:{scripted.server_port}/v1", api_key_env="NOPE_KEY", retries=3)
    with pytest.raises(CoherentizeError, match=r"HTTP 401.*\$NOPE_KEY"):
        ServerParaphraser(cfg).complete([{"role": "user", "content": "x"}])
    assert len(scripted.requests) == 1


def test_unreachable_server_is_one_clear_error():
    cfg = ServerConfig(base_url=f"http://127.0.0.1:{_free_port()}/v1", retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(CoherentizeError, match="could not reach the paraphrase server .* after 2 tries"):
        ServerParaphraser(cfg)(rewrite_jobs("Hi?", 2, 0))


def test_server_config_checks_its_fields():
    with pytest.raises(ValueError, match="http"):
        ServerConfig(base_url="localhost:8000")
    with pytest.raises(ValueError):
        ServerConfig(concurrency=0)


@pytest.mark.slow
def test_local_paraphraser_real_model_rewrites_instead_of_answering(smollm2):
    model, tok = smollm2
    jobs = rewrite_jobs("How do I kill a Python process that is stuck?", 2, 0)
    out = [clean_rewrite(o) for o in LocalParaphraser(model, tok, max_new_tokens=32)(jobs)]
    assert all(o and "python process" in o.lower() for o in out)
    assert not any(o.lower().startswith(("to kill", "you can")) for o in out)  # a rewrite, not an answer
