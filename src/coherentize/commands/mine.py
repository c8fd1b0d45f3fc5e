"""Find where a model disagrees with itself: rank clusters and variation families by incoherence.

    coherentize mine --model smollm2-135m-instruct --input benign --families all --top 20 --out mined/
    coherentize mine --model out/organism --input clusters.jsonl --layers 15,-1 --top 50 --out mined/
    coherentize train --set data.train_file=mined/top.jsonl --set data.split=null --set data.eval_split=null

--input is a shipped prompt set (benign, alignment, raw_text, edgy_benign), a prompt file ({"id", "prompt", "tags"} a
line; clusters are built from --families with the one cluster builder) or a clusters JSONL ({"id", "anchor",
"variations"} a line; --families then keeps only those families' variations). Each cluster is scored by decision
flips (string refusal judge; multiple-choice letters on MC items), JS divergence on the anchor's own greedy answer
and the residual-stream distance at --layers (the formula: coherentize/evaluate/mining.py). Writes into --out: ranked.jsonl
(every cluster, most incoherent first), top.jsonl (the top clusters, training-ready), families.json, mine.md,
mine.html and families.png. Scores are appended to <out>/scores.partial.jsonl as they finish; re-running the same
command skips the clusters already scored (another --top only rewrites the outputs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coherentize.errors import CoherentizeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="packaged model name, folder, .gguf file or hub id")
    p.add_argument("--input", required=True,
                   help="a shipped prompt set (benign, alignment, raw_text, edgy_benign), a prompt JSONL or a "
                        "clusters JSONL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--families", default="all",
                   help="comma-separated variation families, or 'all' (default); with a clusters file: keep only "
                        "these families' variations")
    p.add_argument("--templates", action="append", default=[],
                   help="YAML/JSON file of template families with a {prompt} slot (repeatable); their names become "
                        "valid --families")
    p.add_argument("--jailbreak", action="append", default=[], metavar="SOURCE",
                   help="add jailbreak template families as variation families: project, easyjailbreak or a file "
                        "(repeatable); 'all' then includes them")
    p.add_argument("--per-family", type=int, default=1, help="variations per family per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the variations (default 0)")
    p.add_argument("--split", choices=["train", "validation", "test"], help="only prompts/clusters of this split")
    p.add_argument("--max-prompts", type=int, help="only the first N prompts or clusters")
    p.add_argument("--top", type=int, default=20, help="clusters written to top.jsonl (default 20)")
    p.add_argument("--layers", default="mid,-1",
                   help="residual-stream layers for the activation distance: comma-separated block indices (l = "
                        "after block l, -1 = the last), 'mid' (block n/2), or 'none' (default mid,-1)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer length (default 32)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward/decode batch (default 16)")
    p.add_argument("--chunk-size", type=int, default=8, help="clusters scored (and saved) together (default 8)")
    p.add_argument("--harmful", action="store_true",
                   help="the prompts are harmful requests: keep judged labels only, no prompt or answer text "
                        "(clusters with tags.harmful are treated so anyway)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--prompt-format", default="auto", choices=["auto", "chat", "raw"],
                   help="chat template or raw text (default auto: chat if the tokenizer has a template)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def parse_layers(value: str) -> list[int | str]:
    """--layers: 'none', or comma-separated ints and 'mid'."""
    if value.strip() == "none":
        return []
    out: list[int | str] = []
    for tok in _split(value):
        if tok == "mid":
            out.append(tok)
            continue
        try:
            out.append(int(tok))
        except ValueError:
            raise CoherentizeError(f"--layers: {tok!r} is not a layer; give block indices (e.g. 15,-1), 'mid' or "
                                   "'none'.") from None
    if not out:
        raise CoherentizeError("--layers: no layer given; use e.g. 'mid,-1', or 'none' for no activation distance.")
    return out


def _is_clusters_file(path: Path) -> bool:
    """A clusters JSONL has 'anchor' on its first line; a prompt file has 'prompt'."""
    from coherentize.clusters import read_jsonl

    for _, obj in read_jsonl(path):
        return "anchor" in obj
    return False


def load_input(args) -> list:
    """The clusters to score: built from a prompt set/file, or read from a clusters file (families kept)."""
    from coherentize.clusters import load_clusters, select_split
    from coherentize.variations.build import build_clusters, families_by_name
    from coherentize.variations.families import load_template_families
    from coherentize.variations.prompt_sets import read_prompts, resolve_input
    from coherentize.variations.templates import template_families

    names = _split(args.families)
    if not names:
        raise CoherentizeError("--families: give 'all' or family names, comma-separated.")
    path = resolve_input(args.input)
    if path.is_file() and _is_clusters_file(path):
        clusters = select_split(load_clusters(path), args.split)
        if names != ["all"]:
            present = {v.family for c in clusters for v in c.variations}
            unknown = [n for n in names if n not in present]
            if unknown:
                raise CoherentizeError(f"--families: {', '.join(map(repr, unknown))} not in {path}; its families are "
                                       f"{', '.join(sorted(present))} (or 'all').")
            kept = [(c, [v for v in c.variations if v.family in names]) for c in clusters]
            clusters = [type(c)(c.id, c.anchor, vs, list(c.continuations), dict(c.tags)) for c, vs in kept if vs]
    else:
        extra = [fam for t in args.templates for fam in load_template_families(t)]
        for src in args.jailbreak:
            if src not in ("project", "easyjailbreak") and not Path(src).is_file():
                raise CoherentizeError(f"--jailbreak {src}: not a file, nor 'project' or 'easyjailbreak'.")
            extra += list(template_families([src]).values())
        families = families_by_name(names, extra)
        items = select_split(read_prompts(path), args.split)
        if args.max_prompts is not None:
            items = items[: args.max_prompts]
        clusters = [c for c in build_clusters(items, families, args.seed, args.per_family) if c.variations]
    if args.max_prompts is not None:
        clusters = clusters[: args.max_prompts]
    if not clusters:
        raise CoherentizeError(f"--input {args.input}: no cluster with a variation to score"
                               + (f" in split {args.split!r}." if args.split else "."))
    return clusters


def main(args) -> int:
    from coherentize.recipes.mine import mine_to_dir

    if args.top < 1 or args.per_family < 1 or args.max_new_tokens < 1 or args.batch_size < 1 or args.chunk_size < 1:
        raise CoherentizeError("--top, --per-family, --max-new-tokens, --batch-size and --chunk-size must be >= 1.")
    if args.max_prompts is not None and args.max_prompts < 1:
        raise CoherentizeError("--max-prompts must be >= 1.")
    layers = parse_layers(args.layers)
    clusters = load_input(args)
    settings = {"model": args.model, "input": args.input, "families": args.families, "templates": args.templates,
                "jailbreak": args.jailbreak, "per_family": args.per_family, "seed": args.seed, "layers": layers,
                "max_new_tokens": args.max_new_tokens, "prompt_format": args.prompt_format,
                "harmful": args.harmful, "judge": "string"}

    def load():
        from coherentize.chat import is_chat_model
        from coherentize.evaluate.mining import resolve_layers
        from coherentize.models import ModelConfig, load_model

        model, tok = load_model(ModelConfig(name_or_path=args.model, device=args.device, dtype=args.dtype,
                                            prompt_format=args.prompt_format))
        resolve_layers(model, layers)  # a bad layer fails before any scoring
        return model, tok, is_chat_model(tok, args.prompt_format)

    summary = mine_to_dir(args.out, clusters, settings, load, top=args.top, layers=layers,
                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, chunk_size=args.chunk_size,
                          harmful=True if args.harmful else None, progress=False if args.no_progress else None,
                          meta={"model": args.model, "input": args.input})
    print(f"clusters scored: {summary.scored}   already done (skipped): {summary.resumed}   "
          f"wall time: {summary.seconds:.1f} s")
    print(f"{'family':<22}{'n':>5}{'score':>9}{'flips':>8}{'JS bits':>9}")
    for fam, d in summary.families.items():
        js = d["js_bits"]["mean"]
        print(f"{fam:<22}{d['n']:>5}{d['score']['mean']:>9.3f}{d['flips']['mean']:>8.0%}"
              f"{'n/a' if js is None else f'{js:.3f}':>9}")
    print("top clusters: " + json.dumps([s.id for s in summary.ranked[: args.top]]))
    print("wrote " + ", ".join(str(p) for p in summary.files), file=sys.stderr)
    return 0
