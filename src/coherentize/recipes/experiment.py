"""The staged experiment behind `coherentize run`: organism -> variations -> [mine] -> baseline eval -> [learning
rate chosen on validation] -> train -> eval -> report. The mine stage runs only for arms trained on mined or random
clusters (ArmDefinition.data); the selection only when select.learning_rates is set (recipes/selection.py).

Each stage is one function below, taking its own config section; `run_experiment` calls them in order. Their
results are cached per stage (recipes/stages.py: keyed by config and code version, so a re-run skips finished stages
and a killed run resumes at the stage it was in); the training and evaluation stages are jobs (recipes/jobs.py) run
here or `jobs` at a time in processes of their own; the evaluation stages share one loaded base model and swap the
arms' adapters (recipes/models.EvalModels). Arms run on the same clusters and seeds; ``control`` is the same steps on
the same anchors and responses with no variation (plain SFT of the anchors on their own responses). The config and
its checks: recipes/experiment_config.py.

    coherentize run                       # the default experiment (configs/default.yaml)
    coherentize run configs/bct_jailbreak.yaml --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from coherentize.config import to_dict
from coherentize.errors import CoherentizeError
from coherentize.evaluate.suite import EvalConfig
from coherentize.io import write_json
from coherentize.models import ModelConfig
from coherentize.recipes import selection
from coherentize.recipes.experiment_config import (Arm, ExperimentConfig, MineConfig, VariationsConfig, arm_of,
                                                   report_facts, validate)
from coherentize.recipes.jobs import (Baseline, EvaluateArm, Job, JobContext, TrainArm, run_here, run_in_processes,
                                      run_job, run_on_ray)
from coherentize.recipes.models import EvalModels
from coherentize.recipes.organism import OrganismConfig
from coherentize.recipes.selection import SelectConfig
from coherentize.recipes.stages import COSMETIC_EVAL_FIELDS, COSMETIC_TRAIN_FIELDS, STAGES, Stages, without
from coherentize.report.facts import run_name

__all__ = ["ExperimentConfig", "run_experiment", "validate"]


def _print(msg: str) -> None:
    print(msg, flush=True)  # each line as it happens, also into a file (nohup ... > run.log)


def run_experiment(cfg: ExperimentConfig, only: str | None = None, log=_print, force=(),
                   data_into: Path | None = None) -> Path:
    """Run (or resume) every stage; returns the report path. only: run just that stage (its inputs must be done).
    force: stages (organism, variations, baseline, train, eval) to run again although they are done. data_into: a
    results data folder (report/data.py) that receives the per-item data of every finished evaluation as each job
    ends, and the report's at the end, kept beside what it already holds from earlier sessions of the same grid.

    A run that fails before any stage finished leaves no output folder behind. Each stage's wall time is logged as it
    ends and written to <out_dir>/summary.json (Stages.write_summary)."""
    validate(cfg)
    if only is not None and only not in STAGES:
        raise CoherentizeError(f"--stage {only!r}: choose one of {', '.join(STAGES)}.")
    bad = [f for f in force if f not in STAGES[:-1]]
    if bad:
        raise CoherentizeError(f"--force {','.join(bad)}: choose from {', '.join(STAGES[:-1])} "
                               "(the report is always written).")
    if data_into is not None:
        check_data_folder(Path(data_into), Path(cfg.out_dir).name, cfg.model.name_or_path)
    st = Stages(Path(cfg.out_dir), to_dict(cfg), log, force, only)
    fresh = not st.root.exists()
    try:
        return _run_stages(cfg, st, data_into)
    except Exception:
        if fresh and st.root.is_dir() and not any(st.root.glob("stages/**/done.json")):
            import shutil

            shutil.rmtree(st.root, ignore_errors=True)
        raise


def check_data_folder(dest: Path, experiment: str, model: str) -> None:
    """--data-into's folder, checked before any model time: a file, or the data of another experiment or model, is
    one error naming it."""
    from coherentize.report import data as report_data

    if dest.exists() and not dest.is_dir():
        raise CoherentizeError(f"--data-into {dest}: not a folder.")
    if (dest / "manifest.json").is_file():
        man = report_data.read(dest)["manifest"]
        for field, want in (("experiment", experiment), ("model", model)):
            if man.get(field) != want:
                raise CoherentizeError(f"--data-into {dest}: it holds the data of {field} {man.get(field)!r}, this "
                                       f"run's {field} is {want!r} (the experiment is out_dir's name); choose "
                                       "another folder.")


def _run_stages(cfg: ExperimentConfig, st: Stages, data_into: Path | None = None) -> Path:
    """The stages in order."""
    t0 = time.time()
    arms = [arm_of(cfg, a) for a in cfg.arms]
    model_cfg = organism_stage(st, cfg.model, cfg.organism)
    models = EvalModels(model_cfg)
    vdir = variations_stage(st, cfg.variations, cfg.response_max_new_tokens, cfg.eval.jailbreak_sources, model_cfg)
    ctx = job_context(cfg, model_cfg, vdir)
    mine_dir = None
    if any(a.data != "variations" for a in arms):
        mine_dir = mine_stage(st, cfg.mine, cfg.seeds, cfg.eval.batch_size, models, ctx.train_path)
    baseline = baseline_stage(st, cfg.eval)
    parallel = (cfg.jobs > 1 or cfg.executor == "ray") and st.only is None
    if baseline is not None and not parallel:  # with jobs > 1 it runs beside the arms' jobs
        run_job(baseline, st, models, ctx)
        baseline = None
    candidates = select_stage(st, arms, cfg.select, cfg.variations, ctx, models, mine_dir,
                              earlier_selection(data_into, cfg.select, cfg.seeds))
    jobs, runs = arm_stages(st, arms, cfg.seeds, candidates, ctx, mine_dir)
    on_done = None
    if data_into is not None:
        def on_done(job=None):
            if not isinstance(job, TrainArm):
                write_progress(st, cfg, runs, Path(data_into))

        on_done()  # the arm-seeds finished in an earlier invocation
    execute = executor(cfg, st, models, ctx)
    execute(([baseline] if baseline is not None else []) + jobs, on_done)
    pressure_stage(st, cfg, runs, ctx, models, execute, data_into)
    report = report_stage(st, cfg, runs, t0)
    if data_into is not None and (st.root / "data" / "manifest.json").is_file():
        from coherentize.report import data as report_data

        report_data.accumulate(Path(data_into), report_data.read(st.root / "data"))
        st.log(f"per-item data: {data_into}")
    return report


def executor(cfg: ExperimentConfig, st: Stages, models: EvalModels, ctx: JobContext):
    """execute(jobs, on_done): the config's executor (recipes/jobs.py): Ray, `jobs` local processes, or this process
    (jobs 1, or one stage asked for with --stage)."""
    parallel = (cfg.jobs > 1 or cfg.executor == "ray") and st.only is None

    def execute(jobs: list, on_done=None) -> None:
        if parallel and jobs and cfg.executor == "ray":
            run_on_ray(jobs, st, ctx, cfg.jobs, cfg.ray.address, cfg.ray.cpus_per_job, cfg.ray.gpus_per_job, on_done)
        elif parallel and jobs:
            run_in_processes(jobs, st, ctx, cfg.jobs, on_done)
        else:
            run_here(jobs, st, models, ctx, on_done)

    return execute


def write_progress(st: Stages, cfg: ExperimentConfig, runs: list[dict], dest: Path,
                   pressure: list[dict] | None = None) -> None:
    """The finished evaluations' per-item data into dest (report/render.py's write_progress), with the narrow
    pressures' records measured so far."""
    from coherentize.report.render import write_progress as write

    organism = st.done("organism") if cfg.organism.enabled else None
    if write(st.root, report_facts(cfg), st.dir("baseline"), runs, dest, dict(st.code), dict(st.seconds),
             organism, pressure) is not None:
        st.log(f"   per-item data so far: {dest}")


def organism_stage(st: Stages, model: ModelConfig, organism: OrganismConfig) -> ModelConfig:
    """The refusal-tuned organism (recipes/organism.py), shared between experiments; returns the model to train."""
    from coherentize.models import cache_dir
    from coherentize.recipes.organism import build_organism, select_organism

    st.key("organism", {"model": to_dict(model), "organism": to_dict(organism)})
    if not organism.enabled:
        return model
    info = st.done("organism")
    if info is None:
        st.need("organism")
        d = st.begin("organism", "refusal-tuned model organism")
        # Shared between experiments (built once per recipe, model and code version); a forced stage builds its own.
        root = d / "build" if st.forced("organism") else cache_dir() / "organisms" / f"code-{st.code['source']}"
        selection = None
        if organism.select:  # the recipe chosen on the validation split among organism.select's candidates
            folder, selection = select_organism(model, organism, root=root, log=st.log)
        else:
            folder = build_organism(model, organism, root=root, log=st.log)
        info = st.finish("organism", {"folder": str(folder), **read_json(folder / "organism.json"),
                                      **({"selection": selection} if selection else {})})
    else:
        st.reuse("organism", info, info["folder"])
    return dataclasses.replace(model, name_or_path=info["folder"], gguf_file=None)


def variations_stage(st: Stages, v: VariationsConfig, response_max_new_tokens: int, eval_sources: list[str],
                     model: ModelConfig) -> Path:
    """train.jsonl and heldout.jsonl (recipes/experiment_data.py); returns their folder."""
    from coherentize.recipes.experiment_data import build_training_clusters

    st.key("variations", {"variations": to_dict(v), "r": response_max_new_tokens, "sources": eval_sources},
           "organism")
    vdir = st.dir("variations")
    if st.todo("variations"):
        st.begin("variations", "training and held-out clusters")
        st.finish("variations", build_training_clusters(v, response_max_new_tokens, model, vdir, st.log))
    return vdir


def mine_stage(st: Stages, mine: MineConfig, seeds: list[int], batch_size: int, models: EvalModels,
               train_path: Path) -> Path:
    """The training clusters ranked by the untrained model's incoherence: mined.jsonl, random-seed<s>.jsonl."""
    from coherentize.recipes.experiment_data import mine_training_clusters

    st.key("mine", {"mine": to_dict(mine), "seeds": seeds, "batch": batch_size}, "organism", "variations")
    mine_dir = st.dir("mine")
    if st.todo("mine"):
        st.begin("mine", "training clusters ranked by the model's incoherence")
        model, tok = models.original()
        st.finish("mine", mine_training_clusters(mine, seeds, batch_size, model, tok, models.model_cfg.prompt_format,
                                                 train_path, mine_dir, st.log))
    return mine_dir


def baseline_stage(st: Stages, eval_cfg: EvalConfig) -> Baseline | None:
    """Key the evaluation before training; its job when it must run."""
    st.key("baseline", _eval_key(eval_cfg), "organism", "variations")
    return Baseline() if st.todo("baseline") else None


def earlier_selection(data_into: Path | None, sel: SelectConfig, seeds: list[int]) -> dict | None:
    """The selection.json of --data-into's folder, when a later session of the grid can use it instead of training
    the candidates again: every arm's candidates the same rates as select.learning_rates, and select.seed not among
    the seeds to run (its runs are the candidates themselves, so they are in the folder already). None otherwise."""
    if data_into is None or not sel.learning_rates or sel.seed in seeds:
        return None
    from coherentize.report import data as report_data

    earlier = report_data.read_selection(Path(data_into)) or {}
    same = all([c["learning_rate"] for c in info.get("candidates", [])] == list(sel.learning_rates)
               for info in earlier.values())
    return earlier if earlier and same else None


def select_stage(st: Stages, arms: list[Arm], sel: SelectConfig, v: VariationsConfig, ctx: JobContext,
                 models: EvalModels, mine_dir: Path | None, earlier: dict | None = None) -> dict[str, tuple[float, int]]:
    """The learning rate of each selecting arm, chosen on the validation split (recipes/selection.py); returns
    {arm: (rate, select.seed: the seed its candidate trained at)} and writes selection.json. earlier: a selection
    made in an earlier session of this grid (earlier_selection): the arms it covers take their rate from it."""
    chosen, selected, prompts = {}, {}, {}
    for arm in (a for a in arms if a.selects and earlier and a.name in earlier):
        chosen[arm.name] = (earlier[arm.name]["chosen_learning_rate"], sel.seed)
        selected[arm.name] = earlier[arm.name]
        st.log(f"   {arm.name}: learning rate {chosen[arm.name][0]:g}, chosen on validation in an earlier session "
               "(--data-into's selection.json)")
    for arm in (a for a in arms if a.selects and a.name not in chosen):
        rows = [_candidate(st, arm, lr, sel, v, ctx, models, mine_dir, prompts) for lr in sel.learning_rates]
        rows = [r for r in rows if r is not None]
        if len(rows) < len(sel.learning_rates):
            continue
        best = max(rows, key=lambda r: (r["harmonic_mean"], -r["learning_rate"]))
        chosen[arm.name] = (best["learning_rate"], sel.seed)
        selected[arm.name] = {"chosen_learning_rate": best["learning_rate"], "label": arm.label,
                              "candidates": [without(r, {"seconds"}) for r in rows]}
        st.log(f"   {arm.name}: learning rate {best['learning_rate']:g} chosen on validation (harmonic mean "
               f"{best['harmonic_mean']:.3f}; " +
               ", ".join(f"{r['learning_rate']:g}: {r['harmonic_mean']:.3f}" for r in rows) + ")")
    if selected:
        write_json(st.root / "selection.json", selected)
    return chosen


def _candidate(st: Stages, arm: Arm, lr: float, sel: SelectConfig, v: VariationsConfig, ctx: JobContext,
               models: EvalModels, mine_dir: Path | None, prompts: dict) -> dict | None:
    """One candidate rate: trained at select.seed, then scored on validation; None while either has not run."""
    stage = f"{arm.name}@lr{lr:g}-seed{sel.seed}"
    train = _train_job(st, arm, stage, sel.seed, arm.train_args(sel.seed, lr), ctx, mine_dir)
    if train is not None:
        run_job(train, st, models, ctx)
    if st.done(f"train/{stage}") is None:
        return None
    vname = f"train/{arm.name}@lr{lr:g}-val"
    st.key(vname, {"select": to_dict(sel), "train_jailbreak": v.jailbreak_families, "sources": v.template_sources,
                   "max_new_tokens": ctx.eval.max_new_tokens}, f"train/{stage}")
    info = st.done(vname)
    if info is not None:
        return st.reuse(vname, info)
    if not st.wanted("train"):
        return None
    st.begin(vname, f"validation of {arm.name} at learning rate {lr:g}")
    if not prompts:
        prompts.update(selection.validation_prompts(sel, v))
    model, tok = models.trained(st.dir(f"train/{stage}") / "model")
    score = selection.validation_score(model, tok, prompts, ctx.eval.max_new_tokens, ctx.model.prompt_format)
    return st.finish(vname, {"arm": arm.name, "learning_rate": lr, **score})


def arm_stages(st: Stages, arms: list[Arm], seeds: list[int], chosen: dict[str, tuple[float, int]],
               ctx: JobContext, mine_dir: Path | None) -> tuple[list[Job], list[dict]]:
    """Key every arm-seed's training and evaluation; returns the jobs to run (in order: each training, then its
    evaluation; seed by seed, every arm of a seed before the next seed, so that a grid stopped part-way has whole
    seeds) and the runs the report reads (arm by arm)."""
    jobs, runs = [], []
    ready = []
    for arm in arms:
        if arm.selects and arm.name not in chosen:
            if st.wanted("train"):
                raise CoherentizeError(f"select: no learning rate was chosen for {arm.name}.")
            continue  # --stage of another kind: the selection has not run, so neither have these stages
        ready.append(arm)
    for seed in seeds:
        for arm in ready:
            lr, select_seed = chosen.get(arm.name, (None, None))
            name, targs = run_name(arm.name, seed), arm.train_args(seed, lr)
            train = None
            if lr is not None and seed == select_seed:  # the candidate at this seed and rate IS this seed's run
                st.alias(f"train/{name}", f"train/{arm.name}@lr{lr:g}-seed{seed}")
            else:
                train = _train_job(st, arm, name, seed, targs, ctx, mine_dir)
            st.key(f"eval/{name}", _eval_key(ctx.eval), f"train/{name}")
            jobs += [train] if train is not None else []
            if st.todo(f"eval/{name}"):
                jobs.append(EvaluateArm(name, arm.name, seed, after_training=train is not None))
            runs.append({"arm": arm.name, "seed": seed, "train_dir": str(st.dir(f"train/{name}")),
                         "eval_dir": str(st.dir(f"eval/{name}")), "learning_rate": targs.learning_rate})
    order = {a.name: i for i, a in enumerate(ready)}
    runs.sort(key=lambda r: order[r["arm"]])  # stable: each arm's seeds in order
    return jobs, runs


def _train_job(st: Stages, arm: Arm, name: str, seed: int, targs, ctx: JobContext,
               mine_dir: Path | None) -> TrainArm | None:
    """Key a training stage; its job when it must run in this invocation."""
    deps = ("organism", "variations") + (("mine",) if arm.data != "variations" else ())
    st.key(f"train/{name}", {"arm": arm.name, "seed": seed, "train": without(to_dict(targs), COSMETIC_TRAIN_FIELDS),
                             **({"families": list(arm.families)} if arm.families else {}),
                             "lora": to_dict(ctx.lora), "r": ctx.response_max_new_tokens,
                             "heldout_per_cluster": ctx.heldout_examples_per_cluster}, *deps)
    if not st.todo(f"train/{name}"):
        return None
    data = {"variations": ctx.train_path, "mined": mine_dir and mine_dir / "mined.jsonl",
            "random": mine_dir and mine_dir / f"random-seed{seed}.jsonl"}[arm.data]
    return TrainArm(name, arm.name, seed, targs, arm.control, data, arm.families)


def pressure_stage(st: Stages, cfg: ExperimentConfig, runs: list[dict], ctx: JobContext, models: EvalModels,
                   execute=None, data_into: Path | None = None) -> None:
    """The narrow second fine-tunes of every arm-seed, with the defences (recipes/pressure.py), when pressure.kinds
    names any, as jobs of execute (the arms' executor; None: in this process): pressure.json (the summary) and
    pressure_items.csv (every measured item) in the output folder; with data_into, each finished job's records go
    there as it ends."""
    if not cfg.pressure.kinds or not st.wanted("pressure"):
        return
    from coherentize.recipes import pressure
    from coherentize.report.pressure import summarize, write_items

    progress = None
    if data_into is not None:
        def progress(records):
            write_progress(st, cfg, runs, Path(data_into), records)

    records = pressure.run_pressures(st, cfg.pressure, list(cfg.arms), list(cfg.seeds), runs, ctx, models, progress,
                                     execute)
    write_json(st.root / "pressure.json", summarize(records, cfg.eval.n_boot))
    write_items(records, st.root / "pressure_items.csv")


def report_stage(st: Stages, cfg: ExperimentConfig, runs: list[dict], t0: float) -> Path:
    """report.md and report.html from every stage's results (coherentize.report)."""
    report_path = st.root / "report.md"
    if st.wanted("report"):
        for r in runs:
            if not (Path(r["eval_dir"]) / "done.json").is_file():
                raise CoherentizeError(f"--stage report: evaluation of {r['arm']} seed {r['seed']} has not run yet.")
        from coherentize.recipes.merge import write_runs_file
        from coherentize.report import write_report

        st.begin("report", "report.md and report.html")
        st.write_summary(t0)  # the report reads the stage times
        organism_info = st.done("organism") if cfg.organism.enabled else None
        clusters = read_json(st.dir("variations") / "done.json")
        write_runs_file(st.root, st.config, st.code, st.dir("baseline"), runs, organism_info, clusters)  # for merges
        facts = report_facts(cfg)
        report_path = write_report(st.root, facts, organism_info, st.dir("baseline"), runs, clusters,
                                   pressure_lines(st.root, facts.pressure) if cfg.pressure.kinds else [])
        st.seconds["report"] = round(time.time() - st._t["report"], 3)
        st.log(f"   report done in {st.seconds['report']:.1f} s")
        st.log(f"report: {report_path} and {report_path.with_suffix('.html')} ({time.time() - t0:.0f} s)")
    if st.seconds:
        st.write_summary(t0)
    return report_path


def pressure_lines(root: Path, training: dict | None = None) -> list[str]:
    """The report's narrow-pressure section from pressure.json (none when it has not run); training: each pressure's
    fine-tune settings (recipes/pressure.training_facts)."""
    from coherentize.report.pressure import pressure_section

    path = root / "pressure.json"
    return pressure_section(read_json(path), training=training) if path.is_file() else []


def job_context(cfg: ExperimentConfig, model: ModelConfig, vdir: Path) -> JobContext:
    """What the training and evaluation jobs read: the model, the variations stage's clusters and their settings."""
    trackers = cfg.train.report_to if isinstance(cfg.train.report_to, list) else [cfg.train.report_to]
    return JobContext(model, vdir / "train.jsonl", vdir / "heldout.jsonl", str(model.name_or_path), cfg.eval,
                      cfg.lora, cfg.response_max_new_tokens, cfg.heldout_examples_per_cluster,
                      tuple(t for t in trackers if t in ("tensorboard", "wandb")), Path(cfg.out_dir) / "tensorboard")


def _eval_key(eval_cfg: EvalConfig) -> dict:
    return {"eval": without(to_dict(eval_cfg), COSMETIC_EVAL_FIELDS)}


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
