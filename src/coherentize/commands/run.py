"""Run an experiment end to end: organism -> variations -> baseline eval -> train -> eval -> report.

    coherentize run                          # the default experiment on the packaged SmolLM2-135M-Instruct
    coherentize run --quick                  # a 2-minute smoke run of the same pipeline
    coherentize run configs/bct_jailbreak.yaml --set seeds=[0,1,2]
    coherentize run --preset gpu             # bigger sets and more steps, for an accelerator

Finished stages are cached under <out_dir>/stages and skipped on a re-run; a killed run resumes where it stopped.
A stage's cache key covers its config (less cosmetic settings such as report_to or logging_steps), the stages it
reads, the package version and a hash of the package's source; `--force train,eval` re-runs stages anyway.
Per-stage wall times are printed as each stage ends and written to <out_dir>/summary.json.

A long grid across sessions or machines: `--data-into docs/results/data/NAME` writes every finished evaluation's
per-item data there as its job ends (commit it as it arrives); a later session runs the rest of the grid (say
`--seeds 3,4`) with the same out_dir name and --data-into, and the folder keeps the arm-seeds of both.
`coherentize report --from-data docs/results/data/NAME` renders a partial grid with what is missing.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

PRESETS = {
    "quick": [
        "out_dir=runs/quick", "organism.n_harmful=24", "organism.n_benign=8", "organism.n_edgy=8",
        "organism.n_wrapped_benign=8",
        "organism.max_steps=6", "organism.answer_max_new_tokens=24", "variations.max_prompts=4",
        "variations.families=[synonym,wrapper,register]",
        "train.max_steps=3", "train.per_device_train_batch_size=4", "response_max_new_tokens=16",
        "train.max_response_length=16", "eval.n_harmful=8", "eval.n_overrefusal=8", "eval.n_clusters=2",
        "eval.n_self_report=3", "eval.n_mc=4", "eval.n_sycophancy=6", "eval.n_capability_texts=3",
        "eval.max_new_tokens=16",  # a smoke run: judged answers cut at 16 tokens (results.json says so), not 128
        "eval.n_framed_benign=6", "eval.far_transfer_embedder=none", "eval.n_boot=300",
        "eval.suites=[jailbreak,overrefusal,coherence,capability]",
        "eval.jailbreak_families=[roleplay_actor,research_exemption,opening_sure]",
        "eval.embed_model=none",
    ],
    "gpu": [
        "out_dir=runs/gpu", "model.device=cuda", "organism.max_steps=60",
        "train.max_steps=200", "train.per_device_train_batch_size=16", "seeds=[0,1,2]",
        "eval.n_harmful=0", "eval.n_overrefusal=0", "eval.n_clusters=0", "eval.n_mc=0", "eval.n_sycophancy=0",
        "eval.batch_size=64", "eval.jailbreak_families=[]", "jobs=1",
    ],
}


def default_config_path() -> str:
    return str(resources.files("coherentize").joinpath("configs", "default.yaml"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="experiment config (YAML/TOML); default: the packaged default.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set train.max_steps=50 (repeatable)")
    p.add_argument("--quick", action="store_true", help="the 2-minute smoke preset (same as --preset quick)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="apply a preset of sizes before --set overrides")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (overrides the config)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="jobs run at once, each in its own process with cores/N threads (overrides the config's jobs)")
    p.add_argument("--stage", help="run only this stage (organism, variations, mine, baseline, train, eval, report); "
                                   "the stages it reads must be done")
    p.add_argument("--force", metavar="STAGE[,STAGE]",
                   help="re-run these stages although they are done (organism, variations, mine, baseline, train, eval); "
                        "later stages re-run only if named too")
    p.add_argument("--data-into", metavar="DIR",
                   help="write each finished evaluation's per-item data into this results data folder as its job ends "
                        "(e.g. docs/results/data/NAME, to commit as it arrives); arm-seeds already there from an "
                        "earlier session of the same grid are kept")


def main(args) -> int:
    from coherentize.config import apply_overrides, from_dict, read_config_file
    from coherentize.errors import CoherentizeError
    from coherentize.recipes.experiment import ExperimentConfig, run_experiment

    path = args.config or default_config_path()
    preset = "quick" if args.quick else args.preset
    sets = (PRESETS[preset] if preset else []) + list(args.overrides)
    if args.seeds:
        try:
            sets.append(f"seeds=[{','.join(str(int(s)) for s in args.seeds.split(','))}]")
        except ValueError:
            raise CoherentizeError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2.") from None
    if args.jobs is not None:
        sets.append(f"jobs={args.jobs}")
    data = apply_overrides(read_config_file(path), sets)
    cfg = from_dict(ExperimentConfig, data, where=str(path))
    force = [s.strip() for s in (args.force or "").split(",") if s.strip()]
    report = run_experiment(cfg, only=args.stage, force=force,
                            data_into=Path(args.data_into) if args.data_into else None)
    print(f"report: {report}  (and {report.with_suffix('.html')})")
    return 0
