"""Evaluation figures to experiment trackers (TensorBoard, W&B), the way training's report_to sends its losses.

    coherentize eval --model exported/ --out results/ --report-to tensorboard [--logging-dir tb/]

Every summary in the results (``{"mean", "n", "ci_low", "ci_high"}``) becomes one scalar ``eval/<suite>/<metric>``
(its mean), e.g. ``eval/jailbreak/families/roleplay_actor/success_given_refused``.
"""

from __future__ import annotations

import os
from pathlib import Path

from coherentize.errors import CoherentizeError

TRACKERS = ("tensorboard", "wandb")


def scalars(results: dict, prefix: str = "eval") -> dict[str, float]:
    """{tag: mean} for every summary under results["suites"] (pure)."""
    out: dict[str, float] = {}

    def walk(path: str, node) -> None:
        if isinstance(node, dict) and "mean" in node and "n" in node:
            if isinstance(node["mean"], (int, float)):
                out[path] = float(node["mean"])
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(f"{path}/{k}", v)

    walk(prefix, results.get("suites", {}))
    return out


def parse_report_to(text: str | None) -> list[str]:
    names = [s.strip() for s in (text or "").split(",") if s.strip() and s.strip() != "none"]
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise CoherentizeError(f"--report-to: {bad[0]!r} is not one of {', '.join(TRACKERS)} (or none).")
    return names


def log_scalars(values: dict[str, float], report_to: list[str], logging_dir: str | os.PathLike, step: int = 0) -> None:
    """Write the scalars to each tracker named in report_to."""
    if "tensorboard" in report_to:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CoherentizeError("--report-to tensorboard: the tensorboard package is not installed "
                                   "(pip install tensorboard).") from None
        Path(logging_dir).mkdir(parents=True, exist_ok=True)
        with SummaryWriter(log_dir=str(logging_dir)) as writer:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
    if "wandb" in report_to:
        try:
            import wandb
        except ImportError:
            raise CoherentizeError("--report-to wandb: the wandb package is not installed (pip install wandb).") from None
        run = wandb.run or wandb.init(project=os.environ.get("WANDB_PROJECT", "coherentize"), job_type="eval")
        run.log(values, step=step)
