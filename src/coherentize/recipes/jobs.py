"""The experiment's jobs and the executors that run them.

A job is a small typed value: the baseline evaluation (Baseline), one arm-seed's training (TrainArm) or its
evaluation (EvaluateArm, after its training), or a narrow pressure's stage (recipes/pressure.py's PressureJob, which
runs itself: job.run(st, ctx)). What every job reads is one JobContext (the model, the clusters, the
evaluation and training settings). Three executors run a list of jobs: `run_here` in this process, in order;
`run_in_processes`, `jobs` at a time in spawned processes of cores / jobs torch threads each; `run_on_ray`, as tasks
of a Ray cluster (one machine or many, sharing the output folder), each with its own CPUs and GPUs. In the last two an
evaluation is queued as soon as its training is done, and the first failure stops the others (finished stages stay
done) and is raised.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from coherentize.clusters import load_clusters
from coherentize.errors import CoherentizeError
from coherentize.evaluate.suite import EvalConfig
from coherentize.models import ModelConfig
from coherentize.recipes.models import EvalModels
from coherentize.recipes.stages import Stages
from coherentize.recipes.train_job import DataConfig, LoraSettings, TrainJob
from coherentize.trainer import ConsistencyConfig


@dataclass(frozen=True)
class JobContext:
    """What every job of one experiment reads."""

    model: ModelConfig
    """The model the arms train from and are evaluated on (the organism, or the base model)."""
    train_path: Path
    """The variations stage's training clusters (the evaluation's overlap check reads them)."""
    held_path: Path
    """Held-out clusters of training's before/after consistency measurement (may not exist)."""
    model_name: str
    """The model's name in results.json."""
    eval: EvalConfig
    """The evaluation suite."""
    lora: LoraSettings
    """Adapters of the consistency training."""
    response_max_new_tokens: int
    """Length of the anchors' responses."""
    heldout_examples_per_cluster: int
    """Held-out examples per cluster in training's consistency measurement."""
    trackers: tuple[str, ...] = ()
    """Integrations that receive the evaluation figures (tensorboard, wandb), beside training's losses."""
    tensorboard_dir: Path | None = None
    """Where the evaluation figures' TensorBoard runs go (one per stage)."""


@dataclass(frozen=True)
class Baseline:
    """The evaluation of the model before training."""

    label = "baseline"


@dataclass(frozen=True)
class TrainArm:
    """One arm-seed's training stage (train/<name>)."""

    name: str
    arm: str
    seed: int
    args: ConsistencyConfig
    control: bool
    """The control arm trains on its anchors copied in place of the variations (plain SFT)."""
    data: Path
    """Its training clusters (the variations stage's, or the mine stage's mined / random ones)."""
    families: tuple[str, ...] = ()
    """The variation families it trains on (empty: every variation of its clusters)."""

    @property
    def label(self) -> str:
        return f"train/{self.name}"


@dataclass(frozen=True)
class EvaluateArm:
    """One arm-seed's evaluation stage (eval/<name>), of the model its training stage saved."""

    name: str
    arm: str
    seed: int
    after_training: bool = False
    """True when its training is a job of the same list (run it first)."""

    @property
    def label(self) -> str:
        return f"eval/{self.name}"


Job = Baseline | TrainArm | EvaluateArm


def evaluate(model, tok, reference, ctx: JobContext, out: Path, quiet: bool = False) -> dict:
    """One evaluation stage's work: the suite, results.json / records.csv in out, the figures to the trackers."""
    from coherentize.evaluate import run_suite, write_results

    results = run_suite(model, tok, ctx.eval, reference_model=reference, train_clusters=load_clusters(ctx.train_path),
                        model_name=ctx.model_name, quiet=quiet)
    write_results(results, out)
    if ctx.trackers:  # the evaluation figures go where training's losses go (one TensorBoard run per stage)
        from coherentize.integrations.tracking import log_scalars, scalars

        log_scalars(scalars(results), list(ctx.trackers), ctx.tensorboard_dir / out.parent.name / out.name)
    return results


def train_arm(st: Stages, job: TrainArm, ctx: JobContext) -> None:
    """One training stage: the arm's data (control: anchors copied in place of the variations), one TrainJob."""
    from coherentize.recipes.experiment_data import control_clusters, family_clusters
    from coherentize.recipes.train_job import run_training

    tdir = st.begin(job.label, "consistency training")
    tdir.mkdir(parents=True, exist_ok=True)
    data_file = job.data
    if job.families:
        data_file = family_clusters(data_file, job.families, tdir / "families.jsonl")
    if job.control:
        data_file = control_clusters(data_file, tdir / "control.jsonl")
    saves = max(1, (job.args.max_steps or 1) // 4)
    train_job = TrainJob(
        model=ctx.model, lora=ctx.lora,
        data=DataConfig(train_file=str(data_file), split=None,
                        eval_file=str(ctx.held_path) if ctx.held_path.is_file() else None, eval_split=None,
                        response_max_new_tokens=ctx.response_max_new_tokens,
                        # every arm and seed answers the same anchors with the same (organism) model: generate once
                        responses_cache=str(ctx.held_path.parent / "responses.jsonl"),  # the variations stage's folder
                        heldout_examples_per_cluster=ctx.heldout_examples_per_cluster),
        train=dataclasses.replace(job.args, output_dir=str(tdir), save_strategy="steps", save_steps=saves,
                                  save_total_limit=1),
    )
    run_training(train_job, resume=True)
    st.finish(job.label, {"arm": job.arm, "seed": job.seed})


def run_job(job: Job, st: Stages, models: EvalModels, ctx: JobContext, quiet: bool = False) -> None:
    """Run one job (its stage is known not to be done)."""
    if isinstance(job, Baseline):
        out = st.begin("baseline", "evaluation before training")
        model, tok = models.original()
        res = evaluate(model, tok, None, ctx, out, quiet)
        st.finish("baseline", {"suites": list(res["suites"])})
    elif isinstance(job, TrainArm):
        train_arm(st, dataclasses.replace(job, args=dataclasses.replace(job.args, disable_tqdm=True)) if quiet else job,
                  ctx)
    elif isinstance(job, EvaluateArm):
        out = st.begin(job.label, "evaluation of the arm's model")
        model, tok = models.trained(st.dir(f"train/{job.name}") / "model")
        reference, _ = models.original()
        evaluate(model, tok, reference, ctx, out, quiet)
        st.finish(job.label, {"arm": job.arm, "seed": job.seed})
    else:  # a job that runs its own stages (recipes/pressure.py's PressureJob)
        job.run(st, ctx)


def run_here(jobs: list[Job], st: Stages, models: EvalModels, ctx: JobContext, on_done=None) -> None:
    """The in-process executor: every job in order, with the recipe's models. on_done(job), if given, is called in
    this process after each job ends (as with every executor)."""
    for job in jobs:
        run_job(job, st, models, ctx)
        if on_done is not None:
            on_done(job)


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_WORKER_MODELS: EvalModels | None = None  # in a job process: the evaluation models, loaded once per process


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _for_workers(st: Stages) -> Stages:
    """A copy of st to send to job processes: without this process's logger (a worker prints its own; a logger need
    not pickle), while st itself keeps logging here (on_done's messages, the jobs' progress)."""
    import copy

    sent = copy.copy(st)
    sent.log = None
    return sent


def _worker_job(job: Job, st: Stages, ctx: JobContext) -> dict[str, float]:
    """A job in its own process (spawned: nothing inherited but the arguments). Returns the stages' wall times."""
    global _WORKER_MODELS
    st.log, st.seconds = _print, {}
    if _WORKER_MODELS is None or _WORKER_MODELS.model_cfg != ctx.model:
        _WORKER_MODELS = EvalModels(ctx.model)
    run_job(job, st, _WORKER_MODELS, ctx, quiet=True)
    return st.seconds


def _print(msg: str) -> None:
    print(msg, flush=True)  # each line as it happens, also into a file (nohup ... > run.log)


def _after_training(jobs: list[Job]) -> tuple[list[Job], dict[str, EvaluateArm]]:
    """(the jobs that can start now, {arm-seed name: its evaluation, to start when its training ends})."""
    after = {j.name: j for j in jobs if isinstance(j, EvaluateArm) and j.after_training}
    return [j for j in jobs if not (isinstance(j, EvaluateArm) and j.after_training)], after


def run_in_processes(jobs: list[Job], st: Stages, ctx: JobContext, n_jobs: int, on_done=None) -> None:
    """The local-processes executor: n_jobs spawned processes of cores / n_jobs torch threads each. Jobs are handed
    out one at a time as a process frees up; an evaluation whose training is in the list goes to the front of the
    queue when that training ends, so the grid finishes (and --data-into receives) arm-seeds in order instead of
    every training first. The first failure stops the other jobs (finished stages stay done) and is raised here."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ready, after = _after_training(jobs)
    total, workers, threads = len(jobs), min(n_jobs, len(jobs)), max(1, cpu_cores() // n_jobs)
    st.log(f"-- {total} jobs, {workers} at a time, {threads} torch thread(s) each")
    log, sent = st.log, _for_workers(st)
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads,))
    finished, futures, queue, left, n_done = False, {}, list(ready), set(), 0

    def fill() -> None:  # a job for every free process
        while queue and len(left) < workers:
            job = queue.pop(0)
            f = pool.submit(_worker_job, job, sent, ctx)
            futures[f] = job
            left.add(f)

    try:
        fill()
        while left:
            done, _ = wait(left, return_when=FIRST_COMPLETED)
            left -= done
            for f in done:
                st.seconds.update(f.result())  # raises the job's error
                job, n_done = futures[f], n_done + 1
                log(f"   job {job.label} done ({n_done} of {total})")
                if on_done is not None:
                    on_done(job)
                nxt = after.pop(job.name, None) if isinstance(job, TrainArm) else None
                if nxt is not None:
                    queue.insert(0, nxt)
            fill()
        finished = True
    except BrokenProcessPool:
        raise CoherentizeError("a job's process died without an error (killed, or out of memory?); finished stages "
                               "are kept: run again to resume, or with jobs: 1.") from None
    finally:
        if not finished:  # stop the jobs still running: the pool's processes are this process's new children
            for proc in set(multiprocessing.active_children()) - before:
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_job(job: Job, st: Stages, ctx: JobContext, threads: int) -> dict[str, float]:
    """A job as a Ray task (the worker process may serve several tasks, one at a time)."""
    _worker_init(threads)
    return _worker_job(job, st, ctx)


def run_on_ray(jobs: list[Job], st: Stages, ctx: JobContext, n_jobs: int, address: str | None = None,
               cpus_per_job: int = 0, gpus_per_job: float = 0.0, on_done=None) -> None:
    """The Ray executor: every job a task of cpus_per_job CPUs (0: cores / n_jobs) and gpus_per_job GPUs on a Ray
    cluster (the one this process is connected to, the one at `address`, or a new one on this machine); at most n_jobs
    at once. The stage folders must be on a file system every node sees (the output folder and the model)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else cpu_cores(), include_dashboard=False,
                 log_to_driver=False)
    threads = cpus_per_job or max(1, cpu_cores() // n_jobs)
    task = ray.remote(num_cpus=threads, num_gpus=gpus_per_job, max_retries=0)(_ray_job)
    ready, after = _after_training(jobs)
    st.log(f"-- {len(jobs)} jobs on Ray, {n_jobs} at a time, {threads} CPU(s) and {gpus_per_job:g} GPU(s) each")
    log, sent = st.log, _for_workers(st)
    running, queue, n_done = {}, list(ready), 0
    try:
        while queue or running:
            while queue and len(running) < n_jobs:
                job = queue.pop(0)
                running[task.remote(job, sent, ctx, threads)] = job
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ref)
            st.seconds.update(ray.get(ref))  # raises the job's error (an instance of its own class)
            n_done += 1
            log(f"   job {job.label} done ({n_done} of {len(jobs)})")
            if on_done is not None:
                on_done(job)
            if isinstance(job, TrainArm) and job.name in after:
                queue.insert(0, after.pop(job.name))
    finally:
        for ref in running:  # the first failure stops the jobs still running
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
