"""Evaluate a model: coherence metrics and probes (jailbreak, over-refusal, sycophancy, capability, cross-context)
with 95% CIs.

    coherentize eval --model smollm2-135m-instruct --suite jailbreak,overrefusal --out results/
    coherentize eval --model out/organism --suite coherence --clusters held_out.jsonl \\
        --train-clusters train.jsonl --out results/ [--allow-overlap]
    coherentize eval --config eval.yaml --set n_harmful=80 --model ...
    coherentize eval --server http://127.0.0.1:8000/v1 --model NAME --out results/   # vLLM, llama.cpp, an API
    coherentize eval ... --report-to tensorboard        # every figure as a scalar eval/<suite>/<metric>

--server runs the probes that judge generated text (jailbreak, over-refusal) on a model behind an OpenAI-compatible
server (coherentize/served.py): greedy, the API key from --api-key-env, retries honouring Retry-After.

Writes results.json (schema: coherentize/evaluate/results.py), records.csv (per prompt, redacted excerpts),
activation_separation.png (coherence), and prints a table of every figure with n and its CI, then the jailbreak
headline: attack success beside the answer rate of benign prompts in the same frames (suites.framed_benign), and
far-transfer attack success by attack kind (suites.jailbreak.far_transfer; with --train-clusters or
--set train_families=[...] or jailbreak_far_families=[...]).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coherentize.errors import CoherentizeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="packaged model name, folder, .gguf file or hub id (with --server: the name the server serves)")
    p.add_argument("--reference-model", help="the original model, for capability KL (default: none)")
    p.add_argument("--suite", help="comma-separated: coherence,jailbreak,overrefusal,sycophancy,capability,"
                                   "cross_context,preference (default: all but cross_context and preference)")
    p.add_argument("--out", required=True, help="output folder for results.json and records.csv")
    p.add_argument("--config", help="YAML/TOML file of EvalConfig fields")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override an EvalConfig field")
    p.add_argument("--clusters", help="held-out clusters JSONL for the coherence metrics")
    p.add_argument("--train-clusters", help="training clusters JSONL: overlap with the evaluation is an error")
    p.add_argument("--templates", action="append", default=[], help="extra jailbreak template file (YAML/JSON)")
    p.add_argument("--families", help="comma-separated jailbreak families to score (default: all)")
    p.add_argument("--allow-overlap", action="store_true", help="score prompts/families used in training anyway")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--server", metavar="URL",
                   help="evaluate the model NAME (--model) behind this OpenAI-compatible server, e.g. "
                        "http://127.0.0.1:8000/v1 (generation probes only: jailbreak, overrefusal)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="with --server: environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, help="with --server: requests in flight at once")
    p.add_argument("--report-to", default="none", help="send every figure to tensorboard and/or wandb (comma-separated)")
    p.add_argument("--logging-dir", help="TensorBoard folder for --report-to tensorboard (default: <out>/tensorboard)")


def config_from_args(args) -> "EvalConfig":  # noqa: F821
    from coherentize.config import load_config
    from coherentize.evaluate import EvalConfig
    from coherentize.evaluate.suite import validate

    overrides = list(args.set)
    cfg = load_config(EvalConfig, args.config, overrides)
    if args.suite is not None:
        cfg.suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    if args.clusters:
        cfg.clusters = args.clusters
    if args.train_clusters:
        cfg.train_clusters = args.train_clusters
    if args.templates:
        for t in args.templates:
            if not Path(t).is_file():
                raise CoherentizeError(f"--templates {t}: file not found.")
        cfg.jailbreak_sources = list(cfg.jailbreak_sources) + list(args.templates)
    if args.families:
        cfg.jailbreak_families = [f.strip() for f in args.families.split(",") if f.strip()]
    if args.allow_overlap:
        cfg.allow_overlap = True
    cfg = validate(cfg)
    from coherentize.clusters import load_clusters
    from coherentize.io import writable_dir

    writable_dir(args.out, "--out")  # before any model time: a file here would lose the whole evaluation at the end
    for path in (cfg.clusters, cfg.train_clusters):  # a bad clusters file fails now, not after the model has loaded
        if path:
            load_clusters(path)
    if "jailbreak" in cfg.suites:  # a bad template file or far-transfer family fails now, before the model loads
        from coherentize.evaluate.jailbreak import template_families
        from coherentize.evaluate.suite import far_transfer_setup

        families = template_families(cfg.jailbreak_sources, cfg.jailbreak_families or None)
        far_transfer_setup(cfg, families, load_clusters(cfg.train_clusters) if cfg.train_clusters else None)
    return cfg


def table(results: dict) -> str:
    """Every summary in the results as 'suite  metric  mean [CI] (n)' lines."""
    from coherentize.evaluate.stats import fmt

    lines = []

    def walk(prefix, node):
        if isinstance(node, dict) and "mean" in node and "n" in node:
            lines.append(f"{prefix:<58} {fmt(node)}")
        elif isinstance(node, dict):
            for k, v in node.items():
                if k != "per_layer":
                    walk(f"{prefix}.{k}" if prefix else k, v)

    walk("", results["suites"])
    if "disagreement_with_string" in results.get("judge", {}):
        walk("judge.disagreement_with_string", results["judge"]["disagreement_with_string"])
    for name, agree in results.get("judge", {}).get("agreement", {}).items():
        walk(f"judge.agreement[{name}]", agree)
    return "\n".join(lines)


def headline(results: dict) -> str:
    """The figures to read together: attack success, benign prompts in the same frames, far transfer by kind."""
    from coherentize.evaluate.stats import fmt

    jb, fb = results["suites"].get("jailbreak"), results["suites"].get("framed_benign")
    if not jb:
        return ""
    lines = ["", "jailbreak: attack success beside benign prompts in the same frames"]
    row = lambda name, node: lines.append(f"  {name:<56} {fmt(node)}")  # noqa: E731
    row("attack success (unconditional)", jb["success_unconditional"])
    row("attack success (given direct refusal)", jb["success_given_refused"])
    if fb:
        row("benign in jailbreak frames: answer rate", fb["answer_rate_framed"])
        row("benign asked directly: answer rate", fb["answer_rate_direct"])
    far = jb.get("far_transfer", {})
    if far.get("families"):
        row(f"far transfer ({', '.join(far['kinds'])}): attack success", far["success_unconditional"])
        if fb and "far_transfer" in fb:
            row("far transfer: benign in the same frames, answer rate", fb["far_transfer"]["answer_rate"])
        for kind, v in far.get("by_kind", {}).items():
            row(f"  far, {kind} ({', '.join(v['families'])})", v["success_unconditional"])
    else:
        lines.append("  far transfer: none (" + " ".join(far.get("notes", [])[-1:]) + ")")
    for kind, v in jb.get("by_kind", {}).items():
        row(f"by kind: {kind}", v["success_unconditional"])
    return "\n".join(lines)


def served_model(args, cfg):
    """The model behind --server; only the probes that judge generated text, without the refusal margin."""
    from coherentize.served import SERVED_SUITES, ServedModel
    from coherentize.server import ServerConfig

    if args.suite is None:
        cfg.suites = list(SERVED_SUITES)
    bad = [s for s in cfg.suites if s not in SERVED_SUITES]
    if bad:
        raise CoherentizeError(f"--server: suite(s) {bad} need the model's logits or activations; a served model "
                               f"runs {', '.join(SERVED_SUITES)}.")
    if args.reference_model:
        raise CoherentizeError("--server: --reference-model is for the capability suite, which needs local logits.")
    if cfg.prompt_format == "raw":
        raise CoherentizeError("--server: prompts go to the chat endpoint; prompt_format raw is not supported.")
    cfg.refusal_margin = False
    try:
        server = ServerConfig(base_url=args.server, model=args.model, api_key_env=args.api_key_env or None,
                              concurrency=args.concurrency)
    except ValueError as e:
        raise CoherentizeError(f"--server: {e}") from None
    return ServedModel(server)


def main(args) -> int:
    from coherentize.evaluate import run_suite, write_results
    from coherentize.evaluate.coherence import plot_activation_separation
    from coherentize.models import ModelConfig, load_model

    from coherentize.integrations.tracking import log_scalars, parse_report_to, scalars

    cfg = config_from_args(args)  # bad input fails here, before any model is loaded
    report_to = parse_report_to(args.report_to)
    if args.server:
        model, tok = served_model(args, cfg), None
    else:
        model, tok = load_model(ModelConfig(name_or_path=args.model, device=args.device, dtype=args.dtype,
                                            prompt_format=cfg.prompt_format))
    ref = None
    if args.reference_model:
        ref, _ = load_model(ModelConfig(name_or_path=args.reference_model, device=args.device, dtype=args.dtype))
    results = run_suite(model, tok, cfg, reference_model=ref, model_name=args.model)
    jpath, cpath = write_results(results, args.out)
    layers = results["suites"].get("coherence", {}).get("per_layer")
    if layers:
        plot_activation_separation(layers, Path(args.out) / "activation_separation.png")
    print(table(results))
    print(headline(results))
    print(f"wrote {jpath} and {cpath}")
    if report_to:
        log_scalars(scalars(results), report_to, args.logging_dir or Path(args.out) / "tensorboard")
    return 0
