import os

# One thread per test process: two torch processes fighting over 2 cores run ~6x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
