"""Random-weight models of the packaged models' shapes, with their real tokenizers: what a GPU check runs on when the
packaged GGUF files (94 MB, 491 MB) cannot travel to the GPU machine.

    python benchmarks/gpu_assets.py prepare --out .gpu-assets          # here: config.json + tokenizer of each model
    python benchmarks/gpu_assets.py build --assets .gpu-assets --out /tmp/models          # there: random weights
    python benchmarks/gpu_assets.py build --assets .gpu-assets --out /tmp/models --tiny   # CPU dry run: 2 small layers

`prepare` reads only the GGUF metadata (the architecture and the tokenizer; no weights are dequantized) and writes
<out>/<name>/ with config.json and the tokenizer files, a few MB each. `build` draws random weights from each config
(seed 0, transformers' own initialisation) and saves <out>/<name>/ as a plain transformers folder with the tokenizer,
loadable by `coherentize ... --set model.name_or_path=<out>/<name>`. Outputs of such models are gibberish: this is for
time, memory and the pipeline's plumbing, never for a result.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

NAMES = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def prepare(out: Path, names=NAMES) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from coherentize.models import PACKAGED_MODELS

    for name in names:
        gguf = PACKAGED_MODELS[name]()
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
        size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{name}: {folder} ({size:.1f} MiB)")


def build(assets: Path, out: Path, tiny: bool = False, names=NAMES) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    for name in names:
        cfg = AutoConfig.from_pretrained(assets / name)
        if tiny:  # the same vocabulary and tokenizer, a body small enough for seconds on a CPU
            cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = cfg.layer_types[:2]
        cfg.quantization_config = None
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(assets / name)
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name}: random weights, {n:.1f}M parameters, {cfg.num_hidden_layers} layers -> {folder}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--out", type=Path, default=Path(".gpu-assets"))
    pp.add_argument("--names", default=",".join(NAMES))
    pb = sub.add_parser("build")
    pb.add_argument("--assets", type=Path, default=Path(".gpu-assets"))
    pb.add_argument("--out", type=Path, required=True)
    pb.add_argument("--tiny", action="store_true")
    pb.add_argument("--names", default=",".join(NAMES))
    a = p.parse_args(argv)
    names = a.names.split(",")
    if a.cmd == "prepare":
        prepare(a.out, names)
    else:
        build(a.assets, a.out, a.tiny, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
