"""Export a model as a plain transformers folder (merged weights + tokenizer), and the probes as lm-eval tasks.

    coherentize export --model out/run/arm-bct/checkpoint --out exported/bct
    coherentize export --model out/lora-adapter --base-model smollm2-135m-instruct --out exported/merged
    coherentize export --lm-eval tasks/ [--eval-config eval.yaml] [--set n_harmful=80]
    lm_eval --include_path tasks/ --tasks coherentize --model hf --model_args pretrained=exported/bct \
        --apply_chat_template --batch_size 8

A LoRA adapter folder (one with adapter_config.json) is loaded on its base model and merged with peft's
``merge_and_unload``; the base is --base-model, or else the adapter's own base_model_name_or_path. Anything
``load_model`` reads (packaged name, folder, .gguf, hub id) is saved as safetensors. The result loads with
``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``.

--lm-eval DIR writes the probes (direct refusal, jailbreak families, over-refusal, sycophancy) as
lm-evaluation-harness tasks with their data, sized by EvalConfig (--eval-config, --set); see
coherentize/integrations/lm_eval.py. The same probes run in inspect_ai without an export:
``inspect eval coherentize/jailbreak --model hf/local -M model_path=exported/bct`` (docs/integrations.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from coherentize.errors import CoherentizeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model or LoRA adapter folder (or packaged name, .gguf, hub id)")
    p.add_argument("--out", help="folder to write (must not exist, or be empty, unless --force)")
    p.add_argument("--base-model", help="base model of a LoRA adapter (default: the adapter's base_model_name_or_path)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default float32)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out (or --lm-eval) folder")
    p.add_argument("--lm-eval", dest="lm_eval", metavar="DIR",
                   help="write the probes as lm-evaluation-harness tasks + data into DIR (for lm_eval --include_path)")
    p.add_argument("--eval-config", help="with --lm-eval: YAML/TOML of EvalConfig fields (split, sizes, families)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="with --lm-eval: override an EvalConfig field, e.g. --set n_harmful=80 (repeatable)")


def export_model(model_path: str, out: str | os.PathLike, base_model: str | None = None, dtype: str = "float32",
                 force: bool = False) -> Path:
    """Write merged weights + tokenizer to out; return the folder."""
    from coherentize.models import ModelConfig, load_model

    from coherentize.io import writable_dir

    out = writable_dir(out, "--out")
    if out.exists() and any(out.iterdir()) and not force:
        raise CoherentizeError(f"--out {out}: folder exists and is not empty; choose another or pass --force.")
    adapter_cfg = Path(model_path) / "adapter_config.json"
    if adapter_cfg.is_file():
        from peft import PeftModel

        base = base_model or json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
        if not base:
            raise CoherentizeError(f"{adapter_cfg}: no base_model_name_or_path; pass --base-model.")
        model, tok = load_model(ModelConfig(name_or_path=base, dtype=dtype, device="cpu"))
        try:
            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
        except (OSError, ValueError, KeyError) as e:
            raise CoherentizeError(f"{model_path}: could not apply the adapter to {base!r}: {e}") from None
        if (Path(model_path) / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_path)
    else:
        model, tok = load_model(ModelConfig(name_or_path=model_path, dtype=dtype, device="cpu"))
    from coherentize.io import atomic_dir

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.padding_side = "right"  # plain-transformers default; coherentize sets left padding itself when it loads
        tok.save_pretrained(tmp)
    return out


def main(args) -> int:
    if args.lm_eval:
        from coherentize.config import load_config
        from coherentize.evaluate import EvalConfig
        from coherentize.integrations.lm_eval import write_lm_eval_tasks

        cfg = load_config(EvalConfig, args.eval_config, args.set)
        tasks = write_lm_eval_tasks(args.lm_eval, cfg, force=args.force)
        print(f"wrote {len(tasks)} lm-eval tasks to {args.lm_eval} (tag: coherentize): {', '.join(tasks)}")
        print(f"run: lm_eval --include_path {args.lm_eval} --tasks coherentize --model hf "
              "--model_args pretrained=<exported model> --apply_chat_template")
        if not args.model and not args.out:
            return 0
    if not args.model or not args.out:
        raise CoherentizeError("export: give --model and --out (a model to export), and/or --lm-eval DIR (tasks).")
    out = export_model(args.model, args.out, args.base_model, args.dtype, args.force)
    print(f"exported {args.model} -> {out} (load with AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0
