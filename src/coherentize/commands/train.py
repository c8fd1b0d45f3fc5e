"""Train a model to be consistent across the variations of each prompt cluster.

    coherentize train --config configs/train.yaml --set train.max_steps=40 --set train.learning_rate=5e-4
    coherentize train --set train.report_to=tensorboard    # then: tensorboard --logdir runs/train/runs

Without --config, trains the packaged SmolLM2-135M-Instruct on the packaged demo clusters. Writes the adapter (or
full model) to <output_dir>/model and a metrics JSON to <output_dir>/metrics.json.

Logging: train.report_to names the integrations that receive every logged scalar (tensorboard, wandb, trackio, ...;
none by default): the loss components (loss/output, loss/bct, loss/act, loss/leash), the learning rate, and the
held-out consistency before and after training (heldout_before/*, heldout_after/*). TensorBoard event files go to
<output_dir>/runs/<time>_<host>/ (or $TENSORBOARD_LOGGING_DIR); W&B takes its project from $WANDB_PROJECT.
"""

from __future__ import annotations

import argparse


def fields_help() -> str:
    """Every TrainJob field with its one-line doc, grouped by section (imports the trainer: only built for --help)."""
    from coherentize.config import describe_fields
    from coherentize.recipes.train_job import TrainJob

    return ("configuration fields (YAML/TOML: section -> field: value; or --set section.field=value):\n\n"
            + describe_fields(TrainJob))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment config (YAML or TOML) with sections model, data, lora, train")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set train.learning_rate=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in train.output_dir")
    format_help = p.format_help

    def format_help_with_fields() -> str:  # the field list needs torch + transformers: built only when asked for
        p.epilog = fields_help()
        return format_help()

    p.format_help = format_help_with_fields


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
