"""Numeric precision: the dtype weights load in, and whether training autocasts (``model.precision``).

Mixed precision as on any accelerator: training keeps float32 master weights (full fine-tuning; with LoRA the
adapters are float32, peft's default) and computes the forward and backward passes in a low-precision dtype through
autocast (the Trainer's ``bf16`` / ``fp16`` flags; fp16 adds the Trainer's loss scaling); losses are taken in float32
(``losses`` casts logits up). Evaluation has no optimizer, so it loads the weights in the low-precision dtype directly.

``model.precision``:
- ``auto``: ``bf16-mixed`` on a CUDA GPU with bfloat16 (Ampere and later), ``fp16-mixed`` on an older CUDA GPU;
  on CPU ``bf16-mixed`` where the processor has native bfloat16 dot products (``cpu_has_bf16``: AMD Zen 4+ with
  avx512_bf16, Intel Xeon with AMX; about 1.6x faster evaluation and training steps on 2 EPYC cores, judged labels
  unchanged on the default suites: benchmarks/precision_cpu.py) and ``float32`` elsewhere. The environment variable
  ``COHERENTIZE_PRECISION`` (float32, bf16-mixed, fp16-mixed) replaces what ``auto`` resolves to: the test suite sets
  float32, so that it computes the same on every CPU;
- ``float32``: everything in float32 (the reference path, and what the tests compare against);
- ``bf16-mixed`` / ``fp16-mixed``: as above, also on CPU (bf16 runs fast there only where the processor has
  native bfloat16 dot products: ``cpu_has_bf16``).

``model.dtype`` still wins where set: ``dtype: bfloat16`` loads bfloat16 weights for training too (pure bf16 training,
no float32 master copy).
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path

from coherentize.errors import CoherentizeError

PRECISIONS = ("auto", "float32", "bf16-mixed", "fp16-mixed")
_LOW = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where the CPU has native bfloat16 dot products (x86 avx512_bf16 or AMX; Arm bf16): there a bf16 matmul
    runs several times faster than float32 through oneDNN. Elsewhere bfloat16 on CPU is emulated and slower."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve(setting: str, device: str) -> str:
    """The concrete precision (float32, bf16-mixed or fp16-mixed) of ``model.precision`` on this device."""
    if setting not in PRECISIONS:
        raise CoherentizeError(f"model.precision: {setting!r} is not one of {', '.join(PRECISIONS)}.")
    if setting != "auto":
        return setting
    forced = os.environ.get("COHERENTIZE_PRECISION", "")
    if forced:
        if forced not in PRECISIONS[1:]:
            raise CoherentizeError(f"COHERENTIZE_PRECISION={forced!r} (environment) is not one of "
                                   f"{', '.join(PRECISIONS[1:])}; unset it to let model.precision: auto choose.")
        return forced
    if device.startswith("cuda"):
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "float32"


def load_dtype(dtype: str, precision: str, for_training: bool):
    """The dtype to load weights in: ``dtype`` when set; with ``auto``, float32 for training (master weights) and the
    precision's low dtype for evaluation."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype != "auto":
        if dtype not in names:
            raise CoherentizeError(f"model.dtype: {dtype!r} is not one of auto, float32, bfloat16, float16.")
        return names[dtype]
    if for_training or precision == "float32":
        return torch.float32
    return names[_LOW[precision]]


def trainer_flags(precision: str) -> dict[str, bool]:
    """TrainingArguments' autocast flags for a concrete precision."""
    return {"bf16": precision == "bf16-mixed", "fp16": precision == "fp16-mixed"}


def with_training_precision(args, precision: str, device: str = "cuda"):
    """``args`` (TrainingArguments or a subclass) with the precision's autocast flags, unless the user set bf16 or fp16
    already. A new object through dataclasses.replace, so that __post_init__ (which hands the flags to accelerate)
    runs again. On CPU, TrainingArguments accepts bf16 only with use_cpu (CPU autocast), which is then set."""
    if args.bf16 or args.fp16:
        return args
    flags = trainer_flags(precision)
    if not any(flags.values()):
        return args
    if device == "cpu":
        flags["use_cpu"] = True
    return dataclasses.replace(args, **flags)


def describe(model, precision: str | None = None, args=None) -> dict:
    """What ran: the weights' dtype and device, and the autocast dtype of training (None: no autocast). Written into
    every results and metrics file."""
    import torch

    if not isinstance(model, torch.nn.Module):  # a model behind a server (eval --server): its precision is its own
        return {"weights": None, "device": "server"}
    param = next(model.parameters(), None)
    out = {"weights": str(getattr(model, "dtype", param.dtype if param is not None else torch.float32)).replace(
        "torch.", ""), "device": str(param.device) if param is not None else "cpu"}
    if precision is not None:
        out["precision"] = precision
    if args is not None:
        out["autocast"] = "bfloat16" if args.bf16 else "float16" if args.fp16 else None
    return out
