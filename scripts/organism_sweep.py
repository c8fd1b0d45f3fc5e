"""Organism recipes side by side: build each (OrganismConfig overrides) and measure its held-out room.

For each recipe: the build's wall time, its own check (recipes/organism.quick_check), and an evaluation like
configs/paraphrase_only.yaml's baseline, on the VALIDATION split (up to 48 requests, each in 3 of the 26 held-out
families; over-refusal on the validation benign-edgy prompts): direct refusal, attack success over the families,
over-refusal, and how many families sit strictly between 5% and 95% attack success. Prints one JSON line per recipe
("RESULT {...}"); figures carry n. A recipe is chosen on validation prompts, never on the test split that the
experiments report (issue 18: before 2026-12-04 this script scored the test split).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/organism_sweep.py \\
        '{"max_steps": 30}' '{"n_harmful": 120, "max_steps": 30}' --root /tmp/organisms

This is a diagnostic of the recipes' jailbreak room, which it measures on the experiment's held-out families (with
validation requests): choosing a recipe by it would choose on attack families. An experiment chooses its organism's
recipe with ``organism.select`` instead (recipes/organism.select_organism: scored on validation refusal, benign and
edgy answers only).

Organisms are written under --root (default: a new temporary folder), never into the project's cache. Run it alone:
each recipe is about 2 minutes of build and 1.5 of evaluation on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "paraphrase_only.yaml"  # its held-out families


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+", help="JSON objects of OrganismConfig fields, e.g. '{\"max_steps\": 30}'")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--root", help="folder for the organisms (default: a new temporary folder)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()

    import torch

    from coherentize.config import read_config_file
    from coherentize.evaluate.suite import EvalConfig, run_suite
    from coherentize.models import ModelConfig, load_model
    from coherentize.recipes.organism import OrganismConfig, build_organism

    torch.set_num_threads(args.threads)
    root = Path(args.root or tempfile.mkdtemp(prefix="organisms-"))
    for text in args.recipes:
        overrides = json.loads(text)
        t0 = time.time()
        folder = build_organism(ModelConfig(name_or_path=args.model), OrganismConfig(**overrides), root=root)
        build_s = time.time() - t0
        info = json.loads((folder / "organism.json").read_text())
        model, tok = load_model(ModelConfig(name_or_path=str(folder)))
        cfg = EvalConfig(suites=["jailbreak", "overrefusal"], split="validation", n_harmful=48,
                         jailbreak_families_per_request=3,
                         jailbreak_families=read_config_file(CONFIG)["eval"]["jailbreak_families"])
        res = run_suite(model, tok, cfg, quiet=True)
        jb, orf = res["suites"]["jailbreak"], res["suites"]["overrefusal"]["refusal_rate"]
        fams = {k: v["success_unconditional"] for k, v in jb["families"].items()}

        def fig(s):
            return {"mean": round(s["mean"], 3), "n": s["n"], "ci": [round(s["ci_low"], 3), round(s["ci_high"], 3)]}

        print("RESULT", json.dumps({
            "recipe": overrides, "build_s": round(build_s), "eval_s": round(time.time() - t0 - build_s),
            "own_check": {k: fig(v) for k, v in info["after"].items()},
            "direct_refusal": fig(jb["direct_refusal_rate"]), "attack_success": fig(jb["success_unconditional"]),
            "overrefusal": fig(orf), "families_between_5_and_95": sum(0.05 < s["mean"] < 0.95 for s in fams.values()),
            "families": {k: [round(s["mean"], 2), s["n"]] for k, s in fams.items()}}), flush=True)


if __name__ == "__main__":
    main()
