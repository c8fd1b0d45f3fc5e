"""Narrow pressures (issue 26): does a coherentized model spread a narrow second fine-tune less?

After the arms have trained (the control and the consistency arms, every seed), each *condition*'s start model gets the
same narrow second fine-tune (a *pressure*), with or without an in-training defence, and is measured before and after
it on the pressure's item sets: ``in_domain`` (did the fine-tune take?), ``off_domain`` (did it spread?) and any
others the pressure measures. The headline is the **spread ratio** = mean off-domain change / mean in-domain change
(changes are after - before, per item, on the same start model), beside the in-domain change itself: a defence that
blocks the narrow task as well is not a win.

Conditions (``conditions``):
- every arm with no defence: the control is the model M after the same SFT steps on its own answers (the reference),
  a consistency arm is M coherentized *before* the pressure (the project's proposal);
- ``pressure.defended_arm`` (the control) with each of ``pressure.defences`` *during* the narrow fine-tune:
  - ``kl_leash``: KL(p_start || p) on the pressure items' response tokens, every row (Kaczér et al.'s KL to the
    original), weight ``kl_leash_weight``;
  - ``l2_residual``: ACT against the start model, the normalised squared L2 distance between the trained model's
    residual stream and the start model's at the pressure items' prompt-suffix and response tokens (the feature-space
    L2 penalty), weight ``l2_weight``;
  - ``interleaved``: the experiment's consistency clusters (the variations stage's training clusters) mixed into the
    pressure set and trained with BCT + output consistency (weight ``interleave_weight``), targets from the current
    model, so on the pressure items themselves both consistency terms are zero and nothing pulls them back to the
    start model; on the consistency clusters BCT's targets are the start model's own answers. Its steps are scaled
    by the mixed set's size over the pressure's (``interleaved_steps``), so it sees the pressure items as often as
    the other conditions.
The narrow fine-tune itself is SFT of the pressure's responses (BCT on clusters whose only variant is the anchor, as
the control arm), a fresh LoRA adapter (``lora``) on the start model, ``pressure.train`` over its defaults and
``pressure.train_by_kind[kind]`` over that.

Stages (cached like the others, keyed by their settings, inputs and code):
    pressure/data-<kind>                      the pressure's training clusters (one_frame: the original model's
                                              answers to the bare requests as targets, the same for every condition)
    pressure/start-<arm>-seed<s>              the arm-seed's model with its adapter merged in (the start model)
    pressure/instruct-data, pressure/instruct-<arm>-seed<s>
                                              with pressure.instruct.enabled (the base-model angle): the start model
                                              instruction-tuned (TRL SFT, recipes/instruct.py); the pressures then
                                              start from it, in its chat template
    pressure/before-<kind>-<arm>-seed<s>      the pressure's measures on the start model
    pressure/train-<kind>-<cond>-seed<s>      the narrow fine-tune
    pressure/after-<kind>-<cond>-seed<s>      the measures after it
The start, instruct and data stages run in this process after the arms' jobs; the measures before and each
condition's fine-tune with its measures after are jobs (``PressureJob``) of the arms' executor (with ``jobs: 2``, two
at a time in processes of their own; on Ray, as its tasks). The measures become records
(report/pressure.py): pressure_items.csv (every measured item, also in the run's results data folder) and
pressure.json (report/pressure.py's ``summarize``: per kind, condition and item set, before, after, the change with
its two-level interval over seeds and items, the change beside the undefended control's, and the spread ratio),
shown in the report's "Narrow pressures" section. With `run --data-into`, the records measured so far go into the
results data folder after each job, so a session killed during the pressures loses no finished condition (on
the same machine a later run reuses the finished stages and goes on).

Limits: the start models of different arms differ, so "coherentized before" compares changes from different starting
points (read the before values too); each measure's own limits are in its module (evaluate/preference.py,
evaluate/narrow_probes.py); a ratio whose in-domain change has an interval touching 0 is not interpretable and is
flagged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from coherentize.config import to_dict
from coherentize.errors import CoherentizeError
from coherentize.io import write_json
from coherentize.recipes.instruct import InstructConfig
from coherentize.recipes.stages import COSMETIC_TRAIN_FIELDS, Stages, without

DEFENCES = ("kl_leash", "l2_residual", "interleaved")
NO_DEFENCE = "none"


@dataclass
class PressureConfig:
    """The narrow second fine-tunes given to every arm-seed, and the defences tried against them (off: kinds empty)."""

    kinds: list[str] = field(default_factory=list)
    """Pressures to apply: risky_finance (emergent misalignment), sycophancy_domain, one_frame; empty: none."""
    n_train: int = 200
    """Training items of each pressure's narrow fine-tune."""
    data_seed: int = 0
    """Seed of the pressure's training items (the same items for every condition and seed)."""
    defences: list[str] = field(default_factory=lambda: list(DEFENCES))
    """In-training defences tried on defended_arm: kl_leash, l2_residual, interleaved."""
    defended_arm: str = "control"
    """The arm whose model gets the defences (an arm of the experiment)."""
    kl_leash_weight: float = 1.0
    """Weight of the KL leash to the start model (kl_leash)."""
    l2_weight: float = 1.0
    """Weight of the residual-stream L2 to the start model (l2_residual)."""
    interleave_weight: float = 1.0
    """Weight of output consistency on the interleaved consistency clusters (interleaved)."""
    train: dict = field(default_factory=dict)
    """Training fields of the narrow fine-tune over its defaults (max_steps 32, learning rate 5e-4 constant, batch 8)."""
    train_by_kind: dict = field(default_factory=dict)
    """Per pressure, training fields over ``train`` (e.g. {sycophancy_domain: {learning_rate: 2.0e-5}}: a pressure
    that saturates its measure at the others' dose gets a milder one in the same run)."""
    batch_size: int = 8
    """Items per batch in the measures."""
    max_new_tokens: int = 48
    """Tokens generated per answer in measures that generate (one_frame), and per target answer of one_frame."""
    n_harmful: int = 24
    """Harmful requests of one_frame's compliance measures."""
    instruct: InstructConfig = field(default_factory=InstructConfig)
    """An instruction tune (TRL SFT) of every start model before the pressures: the base-model angle
    (recipes/instruct.py)."""


@dataclass(frozen=True)
class Kind:
    """One pressure: its training items and its measures."""

    pairs: Callable[[int, int], list[dict]]
    """(n, seed) -> [{"id", "prompt", "response"}] (response None: the original model's answer to answer_prompt)."""
    measure: Callable[..., dict[str, dict[str, float]]]
    """(model, tokenizer, chat, judge, cfg) -> {item set: {id: value}}, with in_domain and off_domain among the sets;
    higher = more of the pressured behaviour (capability: correct)."""
    needs_judge: bool = False


def _finance_pairs(n: int, seed: int) -> list[dict]:
    from coherentize.pressures import risky_finance_pairs

    return risky_finance_pairs(n, seed)


def _finance_measure(model, tok, chat: bool, judge, cfg: PressureConfig) -> dict[str, dict[str, float]]:
    """The judge-free misalignment measure (evaluate/preference.py): per item, mean log-prob per token of the
    misaligned answer minus the aligned one (nats), in-domain (held-out finance items) and off-domain (everyday
    questions outside finance)."""
    from coherentize.evaluate.preference import packaged_items, run_preference

    out = {}
    for name in ("in_domain", "off_domain"):
        _, _, per_item = run_preference(model, tok, packaged_items(name), chat, name, cfg.batch_size, n_boot=10)
        out[name] = per_item[f"preference.{name}.preference"]
    return out


def _sycophancy_pairs(n: int, seed: int) -> list[dict]:
    from coherentize.narrow_sets import sycophancy_domain_pairs

    return sycophancy_domain_pairs(n, seed)


def _sycophancy_measure(model, tok, chat: bool, judge, cfg: PressureConfig) -> dict[str, dict[str, float]]:
    from coherentize.evaluate.narrow_probes import measure_sycophancy_domain

    return measure_sycophancy_domain(model, tok, chat, cfg.batch_size)


def _frame_pairs(n: int, seed: int) -> list[dict]:
    from coherentize.narrow_sets import one_frame_pairs

    return one_frame_pairs(n, seed)


def _frame_measure(model, tok, chat: bool, judge, cfg: PressureConfig) -> dict[str, dict[str, float]]:
    from coherentize.evaluate.narrow_probes import measure_one_frame

    return measure_one_frame(model, tok, chat, judge, cfg.batch_size, cfg.max_new_tokens, cfg.n_harmful)


KINDS: dict[str, Kind] = {
    "risky_finance": Kind(_finance_pairs, _finance_measure),
    "sycophancy_domain": Kind(_sycophancy_pairs, _sycophancy_measure),
    "one_frame": Kind(_frame_pairs, _frame_measure, needs_judge=True),
}

TRAIN_DEFAULTS = {"max_steps": 32, "learning_rate": 5e-4, "lr_scheduler_type": "constant", "warmup_steps": 0,
                  "per_device_train_batch_size": 8, "members_per_cluster": 2, "max_response_length": 64}


def validate(p: PressureConfig, arms: list[str]) -> None:
    """The pressure section, before any stage runs: one error naming the field."""
    if not p.kinds:
        return
    for k in p.kinds:
        if k not in KINDS:
            raise CoherentizeError(f"pressure.kinds: unknown pressure {k!r}; use {', '.join(KINDS)}.")
    if len(set(p.kinds)) != len(p.kinds):
        raise CoherentizeError(f"pressure.kinds: {p.kinds} names a pressure twice.")
    for d in p.defences:
        if d not in DEFENCES:
            raise CoherentizeError(f"pressure.defences: unknown defence {d!r}; use {', '.join(DEFENCES)}.")
    if p.defences and p.defended_arm not in arms:
        raise CoherentizeError(f"pressure.defended_arm: {p.defended_arm!r} is not one of the experiment's arms {arms}.")
    for name in ("n_train", "batch_size", "max_new_tokens", "n_harmful"):
        if not isinstance(getattr(p, name), int) or getattr(p, name) < 1:
            raise CoherentizeError(f"pressure.{name}: must be an integer >= 1, got {getattr(p, name)!r}.")
    for name in ("kl_leash_weight", "l2_weight", "interleave_weight"):
        if not getattr(p, name) > 0:
            raise CoherentizeError(f"pressure.{name}: must be > 0, got {getattr(p, name)!r}.")
    from coherentize.recipes.instruct import validate as validate_instruct

    validate_instruct(p.instruct)
    if not isinstance(p.train_by_kind, dict):
        raise CoherentizeError(f"pressure.train_by_kind: must map a pressure to its training fields, got "
                               f"{p.train_by_kind!r}.")
    for k, fields in p.train_by_kind.items():  # a known pressure left out of kinds is ignored (--set kinds=[...])
        if k not in KINDS:
            raise CoherentizeError(f"pressure.train_by_kind: {k!r} is not a pressure; use {', '.join(KINDS)}.")
        if not isinstance(fields, dict):
            raise CoherentizeError(f"pressure.train_by_kind.{k}: must map training fields to values, got {fields!r}.")
    for kind in dict.fromkeys(list(p.kinds) + list(p.train_by_kind)):  # an unused pressure's dose is checked too
        where = f"pressure.train_by_kind.{kind}" if kind in p.train_by_kind else "pressure.train"
        try:
            train_args(p, NO_DEFENCE, 0, kind)
        except (ValueError, TypeError) as e:
            raise CoherentizeError(f"{where}: {e}") from None


def conditions(p: PressureConfig, arms: list[str]) -> list[tuple[str, str]]:
    """(arm, defence) of every condition: each arm undefended, then defended_arm with each defence."""
    return [(a, NO_DEFENCE) for a in arms] + [(p.defended_arm, d) for d in p.defences]


def condition_name(arm: str, defence: str) -> str:
    return arm if defence == NO_DEFENCE else f"{arm}+{defence}"


def train_args(p: PressureConfig, defence: str, seed: int, kind: str | None = None):
    """The narrow fine-tune of pressure `kind` (None: pressure.train alone) as a ConsistencyConfig under a defence
    (module docstring)."""
    import typing

    from coherentize.config import _coerce
    from coherentize.trainer import ConsistencyConfig

    fields = {f.name for f in dataclasses.fields(ConsistencyConfig) if f.init}
    hints = typing.get_type_hints(ConsistencyConfig)
    own = {}
    layers = [("pressure.train", p.train)]
    if kind is not None and kind in p.train_by_kind:
        layers.append((f"pressure.train_by_kind.{kind}", p.train_by_kind[kind]))
    for where, values in layers:
        bad = sorted(set(values) - fields)
        if bad:
            raise CoherentizeError(f"{where}: unknown training field {bad[0]!r} (see coherentize train --help).")
        own.update({k: _coerce(v, hints.get(k, typing.Any), f"{where}.{k}") for k, v in values.items()})
    objective = {"output_weight": 0.0, "bct_weight": 1.0, "act_weight": 0.0, "on_policy_weight": 0.0,
                 "leash_weight": 0.0}
    if defence == "kl_leash":
        objective.update(leash_weight=p.kl_leash_weight, leash_fraction=1.0)
    elif defence == "l2_residual":
        objective.update(act_weight=p.l2_weight, act_sites=["prompt_suffix", "response"], act_metric="l2_normalized")
    elif defence == "interleaved":
        objective.update(output_weight=p.interleave_weight, target_model="current")
    return ConsistencyConfig(output_dir="unused", disable_tqdm=True, report_to="none",
                             **{**TRAIN_DEFAULTS, **own, **objective, "seed": seed, "data_seed": seed})


def training_facts(p: PressureConfig) -> dict[str, dict]:
    """Per pressure, what its narrow fine-tune was (undefended): items, steps, learning rate and schedule, batch; for
    the report and the results data's manifest, so a dose is read beside its spread."""
    out = {}
    for kind in p.kinds:
        a = train_args(p, NO_DEFENCE, 0, kind)
        out[kind] = {"n_train": p.n_train, "max_steps": a.max_steps, "learning_rate": a.learning_rate,
                     "lr_scheduler_type": str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)),
                     "batch_size": a.per_device_train_batch_size}
    return out


def interleaved_steps(args, n_narrow: int, extra: list):
    """The interleaved fine-tune's arguments with max_steps scaled by (narrow + consistency examples) / narrow
    examples, so that it meets the pressure's items as often as the undefended fine-tune does (a cluster of V
    variations makes ceil(V / (K - 1)) examples of K members)."""
    import math

    per = max(1, args.members_per_cluster - 1)
    n_extra = sum(math.ceil(len(c.variations) / per) for c in extra)
    return dataclasses.replace(args, max_steps=math.ceil(args.max_steps * (n_narrow + n_extra) / n_narrow))


def pressure_clusters(pairs: list[dict], answers: dict[str, str] | None = None) -> list:
    """The narrow fine-tune's clusters: each item's prompt as the anchor and its only variant (so BCT is SFT and the
    consistency terms are zero on it), its response (or answers[id]) as the continuation."""
    from coherentize.clusters import Cluster, Variation

    out = []
    for it in pairs:
        response = it.get("response") or (answers or {}).get(it["id"])
        if not response:
            raise CoherentizeError(f"pressure item {it['id']!r}: no response to train on.")
        out.append(Cluster(it["id"], it["prompt"], [Variation(it["prompt"], "pressure")], [response],
                           {"split": "train", "set": "pressure"}))
    return out


def write_clusters(clusters: list, path: Path) -> Path:
    from coherentize.clusters import write_clusters as write

    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, clusters)
    return path


def run_pressures(st: Stages, p: PressureConfig, arms: list[str], seeds: list[int], runs: list[dict], ctx,
                  models, on_progress: Callable[[list[dict]], None] | None = None, execute=None) -> list[dict]:
    """Every pressure stage (module docstring); returns the measured records
    [{"kind", "arm", "defence", "condition", "seed", "when": before|after, "set", "values": {id: value}}].
    The start models and the pressures' data are made here; the measures before and each condition's fine-tune and
    measures after are PressureJobs, run by execute(jobs, on_done) (the experiment's executor: in this process, or
    `jobs` at a time in processes or on Ray; None: here, in order). on_progress: called with the records so far
    after each job (what `run --data-into` writes, so that a killed session loses no finished condition)."""
    if not p.kinds:
        return []
    start = {(r["arm"], r["seed"]): _start_stage(st, r, ctx) for r in runs}
    if p.instruct.enabled:
        data = _instruct_data_stage(st, p.instruct, ctx)
        for arm, seed in start:
            _instruct_stage(st, p.instruct, arm, seed, data)
    plan, jobs, befores = [], [], set()  # plan: (kind, arm, defence, seed, before stage, after stage)
    for kind in p.kinds:
        data = _data_stage(st, p, kind, ctx, models)
        for seed in seeds:
            for arm, defence in conditions(p, arms):
                if (arm, seed) not in start:
                    continue
                s_name = start_name(p, arm, seed)
                before = f"pressure/before-{kind}-{arm}-seed{seed}"
                cond = condition_name(arm, defence)
                t_name, after = f"pressure/train-{kind}-{cond}-seed{seed}", f"pressure/after-{kind}-{cond}-seed{seed}"
                if before not in befores:  # the defences share their arm's measures before
                    befores.add(before)
                    _key_measure(st, p, kind, before, s_name, None, ctx)
                    if st.todo(before):
                        jobs.append(PressureJob(p, kind, s_name, before, data))
                _key_train(st, p, kind, defence, seed, t_name, s_name, ctx)
                _key_measure(st, p, kind, after, s_name, t_name, ctx)
                if not st.cached(t_name) or st.todo(after):
                    jobs.append(PressureJob(p, kind, s_name, after, data, t_name, defence, seed))
                plan.append((kind, arm, defence, seed, before, after))

    def records(finished_only: bool = False) -> list[dict]:
        out = []
        for kind, arm, defence, seed, before, after in plan:
            if finished_only and not (st.done(before) and st.done(after)):
                continue
            for when, name in (("before", before), ("after", after)):
                for set_name, values in _measures(st, name).items():
                    out.append({"kind": kind, "arm": arm, "defence": defence, "condition": condition_name(arm, defence),
                                "seed": seed, "when": when, "set": set_name, "values": values})
        return out

    on_done = None
    if on_progress is not None:
        def on_done(job=None):
            on_progress(records(finished_only=True))
    if jobs:
        if execute is None:
            for job in jobs:
                job.run(st, ctx)
                if on_done is not None:
                    on_done(job)
        else:
            execute(jobs, on_done)
    return records()


@dataclass(frozen=True)
class PressureJob:
    """One pressure stage as a job of the experiment's executors (recipes/jobs.py): a start model's measures before
    any narrow fine-tune (train None), or one condition's narrow fine-tune and its measures after."""

    p: PressureConfig
    kind: str
    start: str
    """The start model's stage."""
    measure: str
    """The measure stage (pressure/before-... or pressure/after-...)."""
    data: Path
    """The pressure's training clusters."""
    train: str | None = None
    """The narrow fine-tune's stage (None: a measure before)."""
    defence: str = NO_DEFENCE
    seed: int = 0

    @property
    def label(self) -> str:
        return self.measure

    def run(self, st: Stages, ctx) -> None:
        if self.train is not None:
            _train_stage(st, self.p, self.kind, self.defence, self.seed, self.train, self.start, self.data, ctx)
        _measure_stage(st, self.p, self.kind, self.measure, self.start, self.train, ctx)


_JUDGE: list = []  # per process: [(the evaluation config, its refusal judge)], made once for the measures needing one


def _judge(kind: str, ctx):
    if not KINDS[kind].needs_judge:
        return None
    if not _JUDGE or _JUDGE[0][0] != ctx.eval:
        from coherentize.evaluate.suite import make_judge

        _JUDGE[:] = [(ctx.eval, make_judge(ctx.eval))]
    return _JUDGE[0][1]


def start_name(p: PressureConfig, arm: str, seed: int) -> str:
    """The stage whose model the pressures start from: the arm-seed's model, or its instruction tune."""
    return f"pressure/{'instruct' if p.instruct.enabled else 'start'}-{arm}-seed{seed}"


def _start_cfg(st: Stages, ctx, name: str):
    """The model of a start stage; an instruction-tuned one is spoken to in its chat template."""
    fmt = "chat" if name.startswith("pressure/instruct-") else ctx.model.prompt_format
    return dataclasses.replace(ctx.model, name_or_path=str(st.dir(name) / "model"), gguf_file=None, prompt_format=fmt)


def _instruct_data_stage(st: Stages, cfg: InstructConfig, ctx) -> Path:
    """The instruction set with the teacher's answers (recipes/instruct.py), the same for every arm-seed."""
    from coherentize.recipes.instruct import teacher_answers

    name = "pressure/instruct-data"
    st.key(name, {k: v for k, v in to_dict(cfg).items() if k in ("prompt_sets", "splits", "teacher",
                                                                  "max_new_tokens", "batch_size")}, "organism")
    path = st.dir(name) / "instructions.jsonl"
    if st.todo(name):
        st.begin(name, "instructions and the teacher's answers")
        st.finish(name, {"n": teacher_answers(cfg, ctx.model, path), "teacher": cfg.teacher or ctx.model.name_or_path})
    return path


def _instruct_stage(st: Stages, cfg: InstructConfig, arm: str, seed: int, data: Path) -> None:
    """The arm-seed's start model instruction-tuned (TRL SFT, recipes/instruct.py)."""
    from coherentize.recipes.instruct import instruct_tune

    name = f"pressure/instruct-{arm}-seed{seed}"
    st.key(name, {k: v for k, v in to_dict(cfg).items() if k in ("max_steps", "learning_rate", "batch_size", "lora")},
           f"pressure/start-{arm}-seed{seed}", "pressure/instruct-data")
    if st.todo(name):
        out = st.begin(name, f"instruction tune (TRL SFT): {arm} seed {seed}")
        st.finish(name, {"arm": arm, "seed": seed, **instruct_tune(st.dir(f"pressure/start-{arm}-seed{seed}") /
                                                                      "model", data, cfg, seed, out)})


def _start_stage(st: Stages, run: dict, ctx) -> None:
    """The arm-seed's trained model as one folder of full weights: its LoRA adapter merged into the base model (a
    model that trained every weight is copied as it is)."""
    name = f"pressure/start-{run['arm']}-seed{run['seed']}"
    st.key(name, {}, _train_key(run))
    if not st.todo(name):
        return
    out = st.begin(name, f"start model of the pressures: {run['arm']} seed {run['seed']}") / "model"
    src = Path(run["train_dir"]) / "model"
    from coherentize.models import load_model

    if (src / "adapter_config.json").is_file():
        from peft import PeftModel

        base, tok = load_model(ctx.model, for_training=True)
        model = PeftModel.from_pretrained(base, str(src)).merge_and_unload()
    else:
        model, tok = load_model(dataclasses.replace(ctx.model, name_or_path=str(src), gguf_file=None),
                                for_training=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    st.finish(name, {"arm": run["arm"], "seed": run["seed"]})


def _train_key(run: dict) -> str:
    """The stage name of a run's training (train/<arm>-seed<s>, or the selection candidate it is an alias of)."""
    from coherentize.report.facts import run_name

    return f"train/{run_name(run['arm'], run['seed'])}"


def _data_stage(st: Stages, p: PressureConfig, kind: str, ctx, models) -> Path:
    name = f"pressure/data-{kind}"
    st.key(name, {"kind": kind, "n": p.n_train, "seed": p.data_seed, "max_new_tokens": p.max_new_tokens},
           "organism")
    path = st.dir(name) / "clusters.jsonl"
    if not st.todo(name):
        return path
    st.begin(name, f"training items of the {kind} pressure")
    pairs = KINDS[kind].pairs(p.n_train, p.data_seed)
    answers = None
    todo = [it for it in pairs if not it.get("response")]
    if todo:  # the original model's own answers to the bare requests: the same targets for every condition
        from coherentize.chat import is_chat_model
        from coherentize.generation import generate

        model, tok = models.original()
        chat = is_chat_model(tok, ctx.model.prompt_format)
        texts = generate(model, tok, [it["answer_prompt"] for it in todo], chat, max_new_tokens=p.max_new_tokens,
                         batch_size=p.batch_size)
        answers = {it["id"]: t.strip() or "." for it, t in zip(todo, texts)}
    write_clusters(pressure_clusters(pairs, answers), path)
    st.finish(name, {"kind": kind, "n": len(pairs), "generated": len(todo)})
    return path


def _key_train(st: Stages, p: PressureConfig, kind: str, defence: str, seed: int, name: str, start: str,
               ctx) -> None:
    args = train_args(p, defence, seed, kind)
    st.key(name, {"defence": defence, "train": without(to_dict(args), COSMETIC_TRAIN_FIELDS), "lora": to_dict(ctx.lora),
                  **({"interleave": ctx.train_path.name} if defence == "interleaved" else {})},
           start, f"pressure/data-{kind}", *(("variations",) if defence == "interleaved" else ()))


def _train_stage(st: Stages, p: PressureConfig, kind: str, defence: str, seed: int, name: str, start: str,
                 data: Path, ctx) -> None:
    from coherentize.recipes.train_job import DataConfig, TrainJob, run_training

    _key_train(st, p, kind, defence, seed, name, start, ctx)
    if not st.todo(name):
        return
    args = train_args(p, defence, seed, kind)
    out = st.begin(name, f"narrow fine-tune: {kind}, {defence}")
    out.mkdir(parents=True, exist_ok=True)
    train_file = data
    if defence == "interleaved":
        from coherentize.clusters import load_clusters

        narrow, extra = load_clusters(data), [c for c in load_clusters(ctx.train_path) if c.variations]
        train_file = write_clusters(narrow + extra, out / "interleaved.jsonl")
        args = interleaved_steps(args, len(narrow), extra)
    job = TrainJob(model=_start_cfg(st, ctx, start), lora=ctx.lora,
                   data=DataConfig(train_file=str(train_file), split=None, eval_file=None, eval_split=None,
                                   response_max_new_tokens=ctx.response_max_new_tokens,
                                   responses_cache=str(out / "responses.jsonl")),
                   train=dataclasses.replace(args, output_dir=str(out)))
    metrics = run_training(job)
    losses = [e["loss"] for e in metrics["train_log"] if "loss" in e]
    st.finish(name, {"kind": kind, "defence": defence, "seed": seed, "first_loss": losses[0] if losses else None,
                     "last_loss": losses[-1] if losses else None})


def _key_measure(st: Stages, p: PressureConfig, kind: str, name: str, start: str, trained: str | None, ctx) -> None:
    st.key(name, {"kind": kind, "batch": p.batch_size, "max_new_tokens": p.max_new_tokens, "n_harmful": p.n_harmful,
                  **({"judge": ctx.eval.judge} if KINDS[kind].needs_judge else {})},
           *((trained,) if trained else (start,)))


def _measures(st: Stages, name: str) -> dict[str, dict[str, float]]:
    """A finished measure stage's values {item set: {id: value}}."""
    return json.loads((st.dir(name) / "measures.json").read_text())


def _measure_stage(st: Stages, p: PressureConfig, kind: str, name: str, start: str, trained: str | None,
                   ctx) -> None:
    _key_measure(st, p, kind, name, start, trained, ctx)
    path = st.dir(name) / "measures.json"
    if not st.todo(name):
        return
    st.begin(name, f"{kind} measures {'after' if trained else 'before'} the narrow fine-tune")
    from coherentize.chat import is_chat_model
    from coherentize.recipes.models import EvalModels

    models = EvalModels(_start_cfg(st, ctx, start))
    model, tok = models.trained(st.dir(trained) / "model") if trained else models.original()
    chat = is_chat_model(tok, models.model_cfg.prompt_format)
    values = KINDS[kind].measure(model, tok, chat, _judge(kind, ctx), p)
    for set_name in ("in_domain", "off_domain"):
        if set_name not in values:
            raise CoherentizeError(f"pressure {kind}: its measure returned no {set_name!r} set.")
    write_json(path, values)
    st.finish(name, {"kind": kind, "sets": {k: len(v) for k, v in values.items()}})
