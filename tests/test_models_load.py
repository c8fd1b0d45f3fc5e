"""Loading a model that does not exist is one line and exit 2, not transformers' retries and a hub traceback."""

import os
import socket
import subprocess
import sys

import pytest

from coherentize.errors import CoherentizeError
from coherentize.models import ModelConfig, load_model


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["no_such_model_dir", "no-such-org/no-such-model"])
def test_export_of_a_missing_model_is_one_line_and_exit_2(tmp_path, name):
    # Online mode with an unreachable hub (a closed loopback port): the case that printed 23 lines of retries.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", OMP_NUM_THREADS="1",
               HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "coherentize", "export", "--model", name, "--out",
                           str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{name!r} is not a local file or folder" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_load_of_an_invalid_name_is_a_clear_error():
    with pytest.raises(CoherentizeError, match="not a valid hub id"):
        load_model(ModelConfig(name_or_path="not a model!", device="cpu"))


def test_output_head_gets_a_contiguous_input_on_a_frozen_model_and_adapter(tmp_path):
    """A frozen model's head was fed transformers' strided hidden[:, -k:, :] view, which torch's matmul cannot fold
    into one product when the weight does not require grad: it copied the whole head weight once per row (an arm's
    evaluation 2.7x slower than the baseline's on Qwen2.5-0.5B). The head must see a contiguous input, logits unchanged,
    also through a peft adapter on the loaded model (an arm's evaluation)."""
    import dataclasses

    import torch
    from peft import LoraConfig, get_peft_model

    from coherentize.recipes.models import EvalModels
    from coherentize.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = ModelConfig(name_or_path=str(tmp_path / "m"), device="cpu", precision="float32")
    model, _ = load_model(cfg)
    model.requires_grad_(False)
    adapter = get_peft_model(load_model(cfg, for_training=True)[0], LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.save_pretrained(tmp_path / "arm")

    seen = []
    ids = torch.randint(3, len(tok), (3, 7))
    with torch.inference_mode():
        reference = model(ids).logits[:, -2:]
        for m in (model, EvalModels(dataclasses.replace(cfg)).trained(tmp_path / "arm")[0]):
            head = m.get_output_embeddings()
            hook = head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
            out = m(ids, logits_to_keep=2).logits
            hook.remove()
            assert out.shape == (3, 2, len(tok))
        torch.testing.assert_close(model(ids, logits_to_keep=2).logits, reference)
    assert seen == [True, True]
