"""Train a model to be consistent across the variations of each prompt cluster.

    coherentize train --config configs/train.yaml --set train.max_steps=40 --set train.learning_rate=5e-4

Without --config, trains the packaged SmolLM2-135M-Instruct on the packaged demo clusters. Writes the adapter (or
full model) to <output_dir>/model and a metrics JSON to <output_dir>/metrics.json.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment config (YAML or TOML) with sections model, data, lora, train")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set train.learning_rate=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in train.output_dir")


def main(args) -> int:
    from coherentize.config import load_config
    from coherentize.recipes.train_job import TrainJob, run_training

    job = load_config(TrainJob, args.config, args.overrides)
    metrics = run_training(job, resume=args.resume)
    out = job.train.output_dir
    print(f"trained on {metrics['n_train_examples']} examples from {metrics['n_train_clusters']} clusters")
    if "heldout_after" in metrics:
        before, after = metrics["heldout_before"]["mean"], metrics["heldout_after"]["mean"]
        print(f"held-out ({after['n_examples']} examples)   before -> after")
        for key in after:
            if key != "n_examples" and after[key] is not None:
                b = before.get(key)
                print(f"  {key:<22} {b if b is not None else float('nan'):9.4f} -> {after[key]:9.4f}")
    print(f"model: {out}/model   metrics: {out}/metrics.json")
    return 0
