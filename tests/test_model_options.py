"""ModelConfig loading options: revision, attention kernel, device map, bitsandbytes quantization (clear errors
where the machine cannot honour them)."""

import pytest

from coherentize.errors import CoherentizeError
from coherentize.models import ModelConfig, load_model, loading_kwargs


def test_attention_kernel_and_device_map_reach_the_model(tiny_folder, monkeypatch):
    import torch
    import transformers

    model, _ = load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu", attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    real, seen = transformers.AutoModelForCausalLM.from_pretrained, {}

    def spy(src, **kw):
        seen.update(kw)
        return real(src, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu", device_map="auto"))
    assert seen["device_map"] == "auto"
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, model.config.vocab_size)


def test_quantization_needs_bitsandbytes_and_a_gpu_one_clear_error(tiny_folder):
    with pytest.raises(CoherentizeError, match=r"model.quantization: 4bit loading needs"):
        load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu", quantization="4bit"))
    with pytest.raises(CoherentizeError, match=r"model.quantization: '3bit' is not one of none, 8bit, 4bit"):
        loading_kwargs(ModelConfig(quantization="3bit"), "cpu", None)


def test_revision_goes_to_the_hub_for_a_hub_id(monkeypatch):
    import transformers

    from coherentize import models

    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(src, **kw):
        seen.update(kw, src=src)
        raise Stop

    monkeypatch.setattr(models, "_check_hub_name", lambda name, revision=None: seen.update(checked=revision))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(Stop):
        load_model(ModelConfig(name_or_path="org/model", revision="v1.0", device="cpu"))
    assert seen["src"] == "org/model" and seen["revision"] == "v1.0" and seen["checked"] == "v1.0"


def test_the_hub_model_example_config_is_a_valid_train_job():
    from pathlib import Path

    from coherentize.config import load_config
    from coherentize.recipes.train_job import TrainJob

    path = Path(__file__).resolve().parents[1] / "examples" / "train_hub_model.yaml"
    job = load_config(TrainJob, path)
    assert "/" in job.model.name_or_path and job.model.revision and job.model.quantization == "4bit"


def test_cpu_models_and_matmuls_are_float32_whatever_the_cpu(tiny_folder):
    """The suite's tolerances assume float32 on CPU. On an Intel Xeon with AMX, torch runs a bfloat16 matmul about 7x
    faster than a float32 one (oneDNN), so a default that took that path would pass on AMD and fail there: dtype "auto"
    must stay float32 on CPU, and a float32 matmul must have float32's error, not bfloat16's (about 1e-3)."""
    import torch

    model, _ = load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu"))  # dtype: auto
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 512, generator=g), torch.randn(512, 64, generator=g)
    exact = a.double() @ b.double()
    err = ((a @ b).double() - exact).abs().max() / exact.abs().max()
    assert err < 1e-5, f"a float32 matmul on this CPU has relative error {err:.1e}: a reduced-precision path"


def test_hub_kernels_are_off_unless_configured(tiny_folder, monkeypatch):
    """transformers loads with use_kernels=True when not told otherwise, and model.train() then fetches compiled
    kernels from the hub (a traceback offline, code from the hub online): every load passes model.use_kernels."""
    import transformers

    model, _ = load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu"), for_training=True)
    assert model.use_kernels is False
    model.train()
    assert model.use_kernels is False
    real, seen = transformers.AutoModelForCausalLM.from_pretrained, []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda src, **kw: seen.append(kw) or real(src, **{**kw, "use_kernels": False}))
    load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu"))
    load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu", use_kernels=True))
    assert [kw["use_kernels"] for kw in seen] == [False, True]


def test_precision_sets_the_weights_dtype_for_training_and_evaluation(tiny_folder):
    import torch

    cfg = ModelConfig(name_or_path=str(tiny_folder), device="cpu", precision="bf16-mixed")
    assert load_model(cfg, for_training=True)[0].dtype == torch.float32  # float32 master weights
    assert load_model(cfg)[0].dtype == torch.bfloat16  # evaluation computes in bfloat16
    auto = ModelConfig(name_or_path=str(tiny_folder), device="cpu")
    assert load_model(auto)[0].dtype == torch.float32  # CPU default: the float32 reference path
    explicit = ModelConfig(name_or_path=str(tiny_folder), device="cpu", dtype="bfloat16", precision="bf16-mixed")
    assert load_model(explicit, for_training=True)[0].dtype == torch.bfloat16  # dtype set: pure bf16 training
    with pytest.raises(CoherentizeError, match=r"model.precision: 'bf15' is not one of auto, float32"):
        load_model(ModelConfig(name_or_path=str(tiny_folder), device="cpu", precision="bf15"))
