"""precision.py: the policy (which dtype, which autocast flags) and the training flags reaching the Trainer."""

import pytest
import torch

from coherentize import precision
from coherentize.errors import CoherentizeError


def test_auto_follows_the_processor_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv("COHERENTIZE_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve("auto", "cpu") == "bf16-mixed"  # AMD Zen 4 / Intel AMX
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve("auto", "cpu") == "float32"  # emulated bf16 would be slower
    monkeypatch.setenv("COHERENTIZE_PRECISION", "float32")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve("auto", "cpu") == "float32"
    assert precision.resolve("bf16-mixed", "cpu") == "bf16-mixed"  # an explicit setting wins over the environment
    monkeypatch.setenv("COHERENTIZE_PRECISION", "half")
    with pytest.raises(CoherentizeError, match="COHERENTIZE_PRECISION='half'"):
        precision.resolve("auto", "cpu")
    monkeypatch.delenv("COHERENTIZE_PRECISION")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve("auto", "cuda") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve("auto", "cuda:1") == "fp16-mixed"  # loss scaling where bfloat16 is missing
    assert precision.resolve("bf16-mixed", "cpu") == "bf16-mixed"
    with pytest.raises(CoherentizeError, match="model.precision"):
        precision.resolve("mixed", "cpu")


def test_load_dtype_keeps_float32_master_weights_for_training():
    assert precision.load_dtype("auto", "bf16-mixed", for_training=True) == torch.float32
    assert precision.load_dtype("auto", "bf16-mixed", for_training=False) == torch.bfloat16
    assert precision.load_dtype("auto", "fp16-mixed", for_training=False) == torch.float16
    assert precision.load_dtype("auto", "float32", for_training=False) == torch.float32
    assert precision.load_dtype("bfloat16", "float32", for_training=True) == torch.bfloat16
    with pytest.raises(CoherentizeError, match="model.dtype"):
        precision.load_dtype("int8", "float32", True)


def test_training_flags_reach_the_trainer_args_and_respect_the_user(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    mixed = precision.with_training_precision(args, "bf16-mixed")
    assert mixed.bf16 and not mixed.fp16 and mixed is not args
    assert precision.with_training_precision(args, "float32") is args
    user = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", bf16=True)
    assert precision.with_training_precision(user, "fp16-mixed") is user  # the user's choice stands


def test_cpu_bf16_detection_reads_the_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda p: info)
    for flags, want in [("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2 fma", False)]:
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        precision.cpu_has_bf16.cache_clear()
        assert precision.cpu_has_bf16() is want
    precision.cpu_has_bf16.cache_clear()
