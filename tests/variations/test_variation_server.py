"""The server back end against a real OpenAI-compatible server: llama-cpp-python's, serving the packaged
SmolLM2-135M-Instruct GGUF on loopback. Includes killing an augment run halfway and resuming it.

Needs ``CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir 'llama-cpp-python[server]'`` (as `make test` installs
it; skipped, with that reason, when llama_cpp is not importable). A server that dies fails the test with its exit
status and log (tests/conftest.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from coherentize.clusters import load_clusters
from coherentize.errors import CoherentizeError
from coherentize.variations import augment, families_by_name
from coherentize.variations.paraphrase import ServerConfig, ServerParaphraser, rewrite_jobs
from coherentize.variations.prompt_sets import read_prompts

pytestmark = [pytest.mark.slow, pytest.mark.server]

PROMPTS = [
    "How do I boil an egg?", "Why is the sky blue?", "What is a good name for a cat?", "How do I tie a tie?",
    "Explain what a noun is.", "How do I make tea?", "What is the capital of Italy?", "How do I save money?",
]


def _cfg(base, **kw):
    return ServerConfig(**{"base_url": base, "model": "smollm2", "max_tokens": 32, "concurrency": 2, "timeout_s": 60,
                           **kw})


def test_real_server_rewrites_reproducibly(llama_server):
    # llama.cpp reuses the previous request's KV cache for the shared prefix and evaluates the rest in a smaller batch,
    # which can change a sampled token: with two requests in flight their order (so the cache) varies, and CI saw a
    # rewrite change. One request at a time from the same server state, each job's own seed repeats it exactly.
    para = ServerParaphraser(_cfg(llama_server, concurrency=1))
    jobs = rewrite_jobs("How do I boil an egg?", 2, 0)
    out = para(jobs)
    assert len(out) == 2 and all(o.strip() for o in out)
    assert out[0] != out[1]  # two styles, two seeds
    again = para(jobs)  # now both calls start from the cache the previous call left
    assert para(jobs) == again


def test_real_server_wrong_path_is_a_clear_error(llama_server):
    para = ServerParaphraser(_cfg(llama_server.removesuffix("/v1") + "/nope", retries=0))
    with pytest.raises(CoherentizeError, match="HTTP 404"):
        para(rewrite_jobs("Hi?", 1, 0))


def test_killed_run_resumes_without_duplicates_or_repeated_requests(llama_server, tmp_path):
    inp, out = tmp_path / "p.jsonl", tmp_path / "c.jsonl"
    partial = tmp_path / "c.jsonl.partial"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    cmd = [sys.executable, "-m", "coherentize", "augment", "--input", str(inp), "--out", str(out),
           "--families", "wrapper", "--paraphraser", "server", "--server-url", llama_server, "--server-model",
           "smollm2", "--paraphrases", "2", "--max-new-tokens", "32", "--embedder", "none", "--chunk-size", "1",
           "--concurrency", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.read_text().count("\n") >= 3):
        assert proc.poll() is None, "augment finished or failed before it could be killed"
        assert time.monotonic() < deadline, "augment wrote fewer than 3 clusters in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # a killed run leaves no file that looks complete
    written = [json.loads(line)["id"] for line in partial.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(written) < len(PROMPTS)

    server = ServerParaphraser(_cfg(llama_server))
    asked: list[str] = []

    def recording(jobs):  # passes every request through to the real server
        asked.extend(j.text for j in jobs)
        return server(jobs)

    items = read_prompts(inp)
    s = augment(items, out, families_by_name(["wrapper"]), paraphraser=recording, n_paraphrases=2, chunk_size=1,
                progress=False)
    done_texts = {PROMPTS[int(i[1:])] for i in written}
    assert asked and not (set(asked) & done_texts)  # no finished cluster is requested again
    assert sorted(set(asked)) == sorted(set(PROMPTS) - done_texts)
    assert s.already_done == len(written)
    clusters = load_clusters(out)  # raises on duplicate ids
    assert sorted(c.id for c in clusters) == sorted(f"q{i}" for i in range(len(PROMPTS)))
    assert not partial.exists()
    assert all(any(v.family == "paraphrase" for v in c.variations) for c in clusters)
