"""Build prompt clusters: each base prompt plus variations from programmatic families and an LLM paraphraser.

    coherentize augment --input benign --families all --out clusters.jsonl
    coherentize augment --input prompts.jsonl --families wrapper,opinion_cue,roleplay --per-family 2 \\
        --paraphraser server --server-url http://127.0.0.1:8000/v1 --server-model my-model --out clusters.jsonl

--input is a prompt file ({"id", "prompt", "tags"} a line) or a shipped set (benign, alignment, raw_text,
edgy_benign). Output is written to <out>.partial as clusters finish and renamed to <out> at the end; re-running the
same command skips the clusters already written.
"""

from __future__ import annotations

import argparse
import sys

from coherentize.errors import CoherentizeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="prompt JSONL file, or a shipped set name (benign, alignment, ...)")
    p.add_argument("--out", required=True, help="clusters JSONL to write")
    from coherentize.variations.families import BUILTIN_FAMILIES

    p.add_argument("--families", default="all",
                   help="comma-separated family names, or 'all' (default), or 'none' (paraphrases only); built in: "
                        + ", ".join(BUILTIN_FAMILIES))
    p.add_argument("--templates", action="append", default=[],
                   help="YAML/JSON file of template families, each template with a {prompt} slot (repeatable; format in "
                        "coherentize/variations/templates.py); their names become valid --families")
    p.add_argument("--per-family", type=int, default=1, help="variations per family per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--split", choices=["train", "validation", "test"], help="only prompts with tags.split == SPLIT")
    p.add_argument("--limit", type=int, help="only the first N prompts")
    g = p.add_argument_group("paraphraser")
    g.add_argument("--paraphraser", choices=["none", "local", "server"], default="none")
    g.add_argument("--paraphrases", type=int, default=2, help="paraphrases per prompt (default 2)")
    g.add_argument("--paraphrase-model", default="smollm2-135m-instruct",
                   help="local: packaged model name, hub id, folder or .gguf (default smollm2-135m-instruct)")
    g.add_argument("--device", default="auto", help="local: cpu, cuda or auto")
    g.add_argument("--server-url", default="http://127.0.0.1:8000/v1", help="server: base URL including /v1")
    g.add_argument("--server-model", default="default", help="server: model name sent with each request")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="server: env variable holding the API key")
    g.add_argument("--concurrency", type=int, default=4,
                   help="server: most requests in flight (1 = exactly repeatable rewrites against llama.cpp, whose "
                        "prefix cache makes request order matter)")
    g.add_argument("--timeout", type=float, default=60.0, help="server: seconds per request")
    g.add_argument("--retries", type=int, default=3, help="server: retries with exponential backoff")
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: 0 = greedy for local, 0.7 for server)")
    g.add_argument("--max-new-tokens", type=int, default=96)
    f = p.add_argument_group("similarity filter")
    f.add_argument("--embedder", default="minilm",
                   help="minilm (packaged all-MiniLM-L6-v2, default), ngram (no model), a sentence-transformers "
                        "name or path, or none (no filter and no cosines)")
    f.add_argument("--filter-families", default="paraphrase",
                   help="families the filter may drop from: comma-separated, or 'all' (default: paraphrase); "
                        "cosines of the others are measured and reported")
    f.add_argument("--min-cosine", type=float, default=0.6)
    f.add_argument("--max-cosine", type=float, default=0.995)
    f.add_argument("--dedup-cosine", type=float, default=0.98)
    p.add_argument("--chunk-size", type=int, default=16,
                   help="prompts paraphrased together before their clusters are written (default 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def _paraphraser(args):
    if args.paraphraser == "none":
        return None
    if args.paraphraser == "server":
        from coherentize.variations.paraphrase import ServerConfig, ServerParaphraser

        try:
            cfg = ServerConfig(
                base_url=args.server_url, model=args.server_model, api_key_env=args.api_key_env,
                concurrency=args.concurrency, timeout_s=args.timeout, retries=args.retries,
                max_tokens=args.max_new_tokens, temperature=0.7 if args.temperature is None else args.temperature,
            )
        except ValueError as e:
            raise CoherentizeError(f"--server-url/--concurrency/--timeout/--retries: {e}") from None
        return ServerParaphraser(cfg)
    from coherentize.models import ModelConfig, load_model
    from coherentize.variations.paraphrase import LocalParaphraser

    model, tok = load_model(ModelConfig(name_or_path=args.paraphrase_model, device=args.device))
    return LocalParaphraser(model, tok, max_new_tokens=args.max_new_tokens, temperature=args.temperature or 0.0)


def main(args) -> int:
    from coherentize.variations.filter import FilterConfig, load_embedder
    from coherentize.variations.pipeline import augment, families_by_name
    from coherentize.clusters import select_split
    from coherentize.variations.prompt_sets import read_prompts, resolve_input
    from coherentize.variations.families import load_template_families

    from coherentize.io import writable_file

    if args.per_family < 0 or args.paraphrases < 0 or args.chunk_size < 1:
        raise CoherentizeError("--per-family and --paraphrases must be >= 0, --chunk-size >= 1.")
    if args.limit is not None and args.limit < 1:
        raise CoherentizeError(f"--limit {args.limit}: give a number of prompts >= 1.")
    writable_file(args.out, "--out")
    extra = [fam for path in args.templates for fam in load_template_families(path)]
    names = _split(args.families)
    families = [] if names == ["none"] else families_by_name(names, extra)
    if not families and args.paraphraser == "none":
        raise CoherentizeError("nothing to do: --families none and --paraphraser none.")
    try:
        filter_cfg = FilterConfig(args.min_cosine, args.max_cosine, args.dedup_cosine)
    except ValueError as e:
        raise CoherentizeError(f"--min-cosine/--max-cosine: {e}") from None
    items = select_split(read_prompts(resolve_input(args.input)), args.split)
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise CoherentizeError(f"{args.input}: no prompts with split {args.split!r}.")
    paraphraser = _paraphraser(args)
    embed = None if args.embedder == "none" else load_embedder(args.embedder)
    summary = augment(
        items, args.out, families, seed=args.seed, per_family=args.per_family, paraphraser=paraphraser,
        n_paraphrases=args.paraphrases, embed=embed, filter_cfg=filter_cfg,
        filter_families=_split(args.filter_families), chunk_size=args.chunk_size, progress=not args.no_progress,
    )
    print(summary.table())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
