"""The experiment's configuration (`coherentize run`): its sections, the arms it names, and the one check of it all
before any stage runs (`validate`). The recipe itself is recipes/experiment.py."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from coherentize.config import to_dict
from coherentize.errors import CoherentizeError
from coherentize.evaluate.suite import EvalConfig
from coherentize.models import ModelConfig
from coherentize.recipes.organism import OrganismConfig
from coherentize.recipes.pressure import PressureConfig, training_facts
from coherentize.recipes.pressure import validate as validate_pressure
from coherentize.recipes.selection import SelectConfig
from coherentize.recipes.train_job import LoraSettings
from coherentize.trainer import ConsistencyConfig
from coherentize.variations.filter import FilterConfig

COMPONENTS = {"output-kl": "output", "bct": "bct", "activation": "act", "on-policy": "on_policy"}
ARM_DATA = ("variations", "mined", "random")
"""Training clusters an arm may use (ArmDefinition.data)."""


@dataclass
class VariationsConfig:
    """How the training (and held-out) clusters are built."""

    prompt_sets: list[str] = field(default_factory=lambda: ["benign", "alignment"])
    """Shipped prompt sets whose prompts become anchors (benign, alignment, raw_text, edgy_benign)."""
    families: list[str] = field(default_factory=lambda: ["synonym", "formatting", "typos", "register", "wrapper", "reorder"])
    """Programmatic families that vary the benign anchors (see coherentize augment --help)."""
    per_family: int = 1
    """Variations per family per prompt."""
    seed: int = 0
    """Seed of the programmatic families."""
    max_prompts: int = 0
    """Cap on anchors per split (0: every prompt of the split)."""
    clusters_file: str | None = None
    """Use this clusters JSONL for training instead of building one (its tags.split = train / test are honoured)."""
    embedder: str | None = None
    """Similarity filter of the variations: minilm, ngram, or a sentence-transformers name/path; null: no filter."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Thresholds of the similarity filter (used when embedder is set)."""
    filter_families: list[str] = field(default_factory=lambda: ["paraphrase"])
    """Families the similarity filter may drop from ('all' for every family); the others are measured only."""
    paraphrase_model: str | None = None
    """A model (packaged name, folder, hub id) that writes paraphrase variations of each anchor; null: none."""
    n_paraphrases: int = 2
    """Paraphrases per anchor when paraphrase_model is set."""
    n_harmful: int = 0
    """Harmful train-split requests used as anchors, wrapped in jailbreak_families (the BCT reproduction)."""
    jailbreak_families: list[str] = field(default_factory=list)
    """Jailbreak template families that wrap the harmful anchors in training; evaluation must not score them."""
    template_sources: list[str] = field(default_factory=lambda: ["project", "easyjailbreak"])
    """Template sources of jailbreak_families (project, easyjailbreak, or template files)."""
    pair_filter: str = "refused_clean"
    """Which (clean, wrapped) harmful pairs to keep: none, refused_clean (the model refuses the clean request; its
    refusal is the target), or refused_clean_complied_wrapped (and it answers the wrapped one: Irpan et al.)."""

    def __post_init__(self):
        for name in ("per_family", "max_prompts", "n_paraphrases", "n_harmful"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 0")


@dataclass
class ArmDefinition:
    """An arm named in the config: its components, their weights and the training settings it changes (e.g. Irpan et
    al.'s ACT beside the project's normalised single-layer variant, or one learning rate per arm)."""

    components: str = "control"
    """control, a component (output-kl, bct, activation, on-policy) or a '+'-joined combination."""
    weights: dict = field(default_factory=dict)
    """Weights of its components (output, bct, act, on_policy), over the experiment's component_weights."""
    train: dict = field(default_factory=dict)
    """Training fields this arm sets over the experiment's `train` (e.g. act_metric: l2, act_layers, leash_weight)."""
    label: str = ""
    """A short description written next to the arm in selection.json and the logs (default: none)."""
    data: str = "variations"
    """Its training clusters: variations (every training cluster), mined (the mine.top_k clusters on which the model
    disagrees with itself most, coherentize.evaluate.mining), or random (as many clusters drawn at random, per seed)."""
    families: list[str] = field(default_factory=list)
    """The variation families this arm trains on, a subset of variations.families (empty: all of them): e.g. one arm
    on within-context rewordings, one on cross-context variations, one on both, from the same clusters. A cluster
    left with no variation of these families is dropped."""


@dataclass
class MineConfig:
    """The mine stage (run only when an arm trains on mined or random clusters): the training clusters scored by
    the model's incoherence before training (coherentize.evaluate.mining: decision flips, output JS, activation distance)."""

    top_k: int = 16
    """Clusters the mined arm trains on (and the random arm draws)."""
    layers: list[int] = field(default_factory=list)
    """Residual-stream layers of the activation-distance term (empty: none)."""
    max_new_tokens: int = 32
    """Tokens of each member's greedy answer (judged for refusal flips)."""


@dataclass
class RaySettings:
    """Where and how the jobs run with executor: ray."""

    address: str | None = None
    """A running cluster ("auto", or ray://head:10001); null: start a Ray instance on this machine for the run."""
    cpus_per_job: int = 0
    """CPUs each job asks for (and its torch threads); 0: this machine's cores / jobs."""
    gpus_per_job: float = 0.0
    """GPUs each job asks for (1: one GPU per job; the job's model goes to the GPU Ray gives it, model.device auto)."""


@dataclass
class ExperimentConfig:
    """`coherentize run`: one experiment, every stage."""

    out_dir: str = "runs/demo"
    """Where stages, results and report.md / report.html are written."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model (a packaged name, folder, .gguf or hub id)."""
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    """The refusal-tuned organism built from the base model (enabled: false uses the base model directly)."""
    variations: VariationsConfig = field(default_factory=VariationsConfig)
    """Training clusters."""
    arms: list[str] = field(default_factory=lambda: ["control", "output-kl+activation"])
    """Arms: control, output-kl, bct, activation, on-policy, '+'-joined combinations (e.g. output-kl+activation), or a
    name defined in arm_definitions."""
    arm_definitions: dict[str, ArmDefinition] = field(default_factory=dict)
    """Named arms with their own components, weights and training settings ({name: {components, weights, train}})."""
    select: SelectConfig = field(default_factory=SelectConfig)
    """Learning rate chosen on a validation split per arm (off unless learning_rates is set)."""
    mine: MineConfig = field(default_factory=MineConfig)
    """Incoherence mining for arms with data: mined / random."""
    component_weights: dict = field(default_factory=lambda: {"output": 1.0, "bct": 1.0, "act": 1.0, "on_policy": 1.0})
    """Weight given to each component an arm names (output, bct, act, on_policy)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; every arm runs each seed, and figures pool prompts and seeds."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Adapters of the consistency training (enabled: false trains every weight)."""
    train: ConsistencyConfig = field(default_factory=lambda: ConsistencyConfig(output_dir="unused"))
    """Base training arguments; an arm sets the component weights, a seed sets seed/data_seed."""
    response_max_new_tokens: int = 32
    """Length of the anchors' responses (the shared continuation and BCT target)."""
    heldout_examples_per_cluster: int = 1
    """Held-out examples per cluster in training's before/after consistency measurement (0: all of them)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The evaluation suite run before training and after each arm and seed."""
    jobs: int = 1
    """Jobs run at once (the baseline evaluation, each arm-seed's training, then its evaluation), each in a process
    of its own with cores / jobs torch threads; the organism and the variations are built first, alone. On a 2-core
    CPU, 2 jobs of 1 thread do ~1.3x the work of one job on both cores (benchmarks/parallel_jobs.py); on a GPU keep 1.
    Threads change float rounding, not what is computed; results of one run are comparable among themselves."""
    executor: str = "local"
    """Where the jobs run: local (this process, or `jobs` spawned processes) or ray (tasks of a Ray cluster: see ray
    and docs/scaling.md; needs pip install ray)."""
    ray: RaySettings = field(default_factory=lambda: RaySettings())
    """The Ray cluster and each job's resources (executor: ray)."""
    pressure: PressureConfig = field(default_factory=PressureConfig)
    """Narrow second fine-tunes given to every arm-seed after training, with in-training defences, and how far each
    spreads (recipes/pressure.py); off unless pressure.kinds names one."""


def arm_components(cfg: ExperimentConfig, arm: str) -> tuple[str, dict[str, float], dict]:
    """(components, weights, training overrides) of an arm: a defined arm's, else the name itself is the components."""
    spec = cfg.arm_definitions.get(arm)
    if spec is None:
        return arm, arm_weights(arm, cfg.component_weights), {}
    where = f"arm_definitions.{arm}"
    unknown = sorted(set(spec.weights) - set(COMPONENTS.values()))
    if unknown:
        raise CoherentizeError(f"{where}.weights: unknown component {unknown[0]!r}; use {', '.join(COMPONENTS.values())}.")
    weights = arm_weights(spec.components, {**cfg.component_weights, **spec.weights})
    fields = {f.name for f in dataclasses.fields(ConsistencyConfig) if f.init}
    bad = sorted(set(spec.train) - fields)
    if bad:
        raise CoherentizeError(f"{where}.train: unknown training field {bad[0]!r} (see coherentize train --help).")
    clash = sorted(set(spec.train) & {"output_weight", "bct_weight", "act_weight", "on_policy_weight", "seed",
                                      "data_seed"})
    if clash:
        raise CoherentizeError(f"{where}.train: {clash[0]!r} is set by the arm's components/weights or the seed.")
    return spec.components, weights, dict(spec.train)


def arm_weights(arm: str, weights: dict) -> dict[str, float]:
    """{'output': w, 'bct': w, 'act': w} for an arm name; control is plain SFT (bct on the anchors themselves)."""
    if arm == "control":
        return {"output": 0.0, "bct": 1.0, "act": 0.0, "on_policy": 0.0}
    parts = arm.split("+")
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or not parts:
        raise CoherentizeError(f"arms: unknown arm {arm!r}; use control, {', '.join(COMPONENTS)} or '+'-joined "
                               "combinations such as output-kl+activation.")
    out = {"output": 0.0, "bct": 0.0, "act": 0.0, "on_policy": 0.0}
    for p in parts:
        out[COMPONENTS[p]] = float(weights.get(COMPONENTS[p], 1.0))
    return out


def validate(cfg: ExperimentConfig) -> None:
    if not cfg.arms:
        raise CoherentizeError("arms: name at least one arm.")
    for arm in cfg.arms:
        arm_components(cfg, arm)
    for name, spec in cfg.arm_definitions.items():
        if name in COMPONENTS or name == "control" or "+" in name:
            raise CoherentizeError(f"arm_definitions.{name}: a defined arm needs a name of its own (not a component).")
        try:
            arm_train_args(cfg, name, cfg.seeds[0] if cfg.seeds else 0)
        except (ValueError, TypeError) as e:
            raise CoherentizeError(f"arm_definitions.{name}.train: {e}") from None
    sel = cfg.select
    unknown = [a for a in sel.arms if a not in cfg.arms]
    if unknown:
        raise CoherentizeError(f"select.arms: {unknown[0]!r} is not one of the experiment's arms {cfg.arms}.")
    if sel.learning_rates and sel.arms and set(sel.arms) != set(cfg.arms):
        raise CoherentizeError(f"select.arms: {sel.arms} would choose the learning rate of some arms only; selection "
                               f"applies to every arm that trains, the control included, or to none (equal arms): "
                               f"drop select.arms or list every arm {cfg.arms}.")
    if any(not (math.isfinite(lr) and lr > 0) for lr in sel.learning_rates):
        raise CoherentizeError(f"select.learning_rates: every rate must be > 0, got {sel.learning_rates}.")
    for name, spec in cfg.arm_definitions.items():
        if spec.data not in ARM_DATA:
            raise CoherentizeError(f"arm_definitions.{name}.data: {spec.data!r}; use {', '.join(ARM_DATA)}.")
        unknown = [f for f in spec.families if f not in cfg.variations.families]
        if unknown:
            raise CoherentizeError(f"arm_definitions.{name}.families: {unknown[0]!r} is not among variations.families "
                                   f"({', '.join(cfg.variations.families)}).")
        if spec.data != "variations" and spec.components == "control":
            raise CoherentizeError(f"arm_definitions.{name}: a control arm trains on the variations' anchors "
                                   "(data: variations).")
    if cfg.mine.top_k < 1:
        raise CoherentizeError(f"mine.top_k: must be >= 1, got {cfg.mine.top_k}.")
    if not cfg.seeds:
        raise CoherentizeError("seeds: name at least one seed.")
    _check_layers(cfg)
    if cfg.jobs < 1:
        raise CoherentizeError(f"jobs: must be >= 1, got {cfg.jobs}.")
    if cfg.executor not in ("local", "ray"):
        raise CoherentizeError(f"executor: {cfg.executor!r}; use local or ray.")
    if cfg.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise CoherentizeError("executor: ray needs Ray installed (pip install 'ray>=2.40'); or use local.")
        if cfg.ray.cpus_per_job < 0 or cfg.ray.gpus_per_job < 0:
            raise CoherentizeError("ray.cpus_per_job and ray.gpus_per_job must be >= 0.")
    _check_overlap(cfg)
    validate_pressure(cfg.pressure, cfg.arms)
    if cfg.variations.jailbreak_families and not cfg.eval.jailbreak_families and not cfg.eval.allow_overlap:
        raise CoherentizeError(
            "eval.jailbreak_families: training wraps harmful anchors in jailbreak families, so name the held-out "
            "families to evaluate (every family of the sources would include the training ones).")
    if cfg.variations.n_harmful and not cfg.variations.jailbreak_families:
        raise CoherentizeError("variations.jailbreak_families: n_harmful > 0 needs families to wrap the harmful anchors.")


def _check_layers(cfg: ExperimentConfig) -> None:
    """Every arm's act_layers against the model's layer count (read from its config file; the organism has the
    base model's layers), before any stage runs."""
    from coherentize.recipes.models import layer_count
    from coherentize.residual import resolve_layers

    n_layers = layer_count(cfg.model)
    if n_layers is None:
        return
    for arm in cfg.arms:
        where = (f"arm_definitions.{arm}.train.act_layers" if "act_layers" in getattr(cfg.arm_definitions.get(arm),
                 "train", {}) else "train.act_layers")
        resolve_layers(arm_train_args(cfg, arm, cfg.seeds[0]).act_layers, n_layers, where)


def _check_overlap(cfg: ExperimentConfig) -> None:
    """The one overlap check (coherentize.evaluate.overlap) before any stage runs: the frames of every template family
    training uses (benign variation families, the jailbreak families around harmful anchors) and those the organism
    complies under, against the text of every evaluation template."""
    from coherentize.evaluate.overlap import check_frames, family_frames
    from coherentize.variations.families import TEMPLATE_FAMILIES
    from coherentize.variations.templates import template_families

    v = cfg.variations
    if v.pair_filter not in ("none", "refused_clean", "refused_clean_complied_wrapped"):
        raise CoherentizeError(f"variations.pair_filter: {v.pair_filter!r}; use none, refused_clean or "
                               "refused_clean_complied_wrapped.")
    if "jailbreak" not in cfg.eval.suites:
        return
    evals = template_families(cfg.eval.jailbreak_sources, cfg.eval.jailbreak_families or None)
    train = {n: TEMPLATE_FAMILIES[n] for n in v.families if n in TEMPLATE_FAMILIES}
    if v.n_harmful and v.jailbreak_families:
        train.update(template_families(v.template_sources, v.jailbreak_families))
    if train:
        check_frames(family_frames(train), family_frames(evals), where="eval.jailbreak_families",
                     allow=cfg.eval.allow_overlap,
                     hint="Training would wrap its prompts in an evaluation family: evaluate on held-out families, "
                          "or set eval.allow_overlap: true if that is deliberate.")
    _check_far_transfer(cfg, evals)
    if cfg.organism.enabled:
        from coherentize.recipes.organism import check_organism_frames

        check_organism_frames(cfg.organism, cfg.eval.jailbreak_sources)


def training_families(cfg: ExperimentConfig) -> list[str]:
    """The template families training uses: the variations' families and, with harmful anchors, the jailbreak
    families wrapped around them (the same families the evaluation later reads off the training clusters)."""
    v = cfg.variations
    return list(dict.fromkeys(list(v.families) + (list(v.jailbreak_families) if v.n_harmful else [])))


def _check_far_transfer(cfg: ExperimentConfig, evals: dict) -> None:
    """eval.jailbreak_far_families against the training families (evaluate.suite.far_transfer_setup: by kind, and by
    meaning unless eval.far_transfer_embedder is none), before any stage: a far-transfer family sharing an attack kind
    with a training family, or close in meaning to one of its frames, is a one-line CoherentizeError naming both.
    Without far families configured nothing can fail here (the evaluation picks them), so no embedder is loaded."""
    if not cfg.eval.jailbreak_far_families:
        return
    from coherentize.evaluate.suite import far_transfer_setup

    train = training_families(cfg)
    far_transfer_setup(dataclasses.replace(cfg.eval, train_families=list(dict.fromkeys(
        list(cfg.eval.train_families) + train))), evals)


def selects(cfg: ExperimentConfig, arm: str) -> bool:
    """Whether the arm's learning rate is chosen on validation (SelectConfig)."""
    sel = cfg.select
    if not sel.learning_rates:
        return False
    return True  # every arm, the control included (validate refuses a subset): arms compared at rates chosen alike


def arm_data(cfg: ExperimentConfig, arm: str) -> str:
    spec = cfg.arm_definitions.get(arm)
    return spec.data if spec is not None else "variations"


def arm_families(cfg: ExperimentConfig, arm: str) -> tuple[str, ...]:
    spec = cfg.arm_definitions.get(arm)
    return tuple(spec.families) if spec is not None else ()


def arm_label(cfg: ExperimentConfig, arm: str) -> str:
    spec = cfg.arm_definitions.get(arm)
    return spec.label if spec is not None and spec.label else arm


@dataclass(frozen=True)
class Arm:
    """One arm as the stages use it: its name and label, whether it is the control, its training clusters, whether
    its learning rate is chosen on validation, and its training arguments less the seed (train_args)."""

    name: str
    label: str
    control: bool
    data: str
    selects: bool
    train: ConsistencyConfig
    """The experiment's training arguments."""
    overrides: dict
    """The arm's own training fields and its component weights, set over `train`."""
    families: tuple[str, ...] = ()
    """The variation families it trains on (empty: all)."""

    def train_args(self, seed: int, learning_rate: float | None = None) -> ConsistencyConfig:
        """The training arguments of this arm at a seed (and a chosen learning rate)."""
        lr = {} if learning_rate is None else {"learning_rate": float(learning_rate)}
        return dataclasses.replace(self.train, **{**self.overrides, **lr}, seed=seed, data_seed=seed)


def arm_of(cfg: ExperimentConfig, arm: str) -> Arm:
    """The Arm named `arm` in the experiment (components, weights and training fields resolved and checked)."""
    import typing

    from coherentize.config import to_dict, _coerce

    components, weights, overrides = arm_components(cfg, arm)
    hints = typing.get_type_hints(ConsistencyConfig)
    overrides = {k: _coerce(v, hints.get(k, typing.Any), f"arm_definitions.{arm}.train.{k}")
                 for k, v in overrides.items()}
    overrides.update(output_weight=weights["output"], bct_weight=weights["bct"], act_weight=weights["act"],
                     on_policy_weight=weights["on_policy"])
    return Arm(arm, arm_label(cfg, arm), components == "control", arm_data(cfg, arm), selects(cfg, arm), cfg.train,
               overrides, arm_families(cfg, arm))


def arm_train_args(cfg: ExperimentConfig, arm: str, seed: int, learning_rate: float | None = None):
    """The training arguments of one arm and seed: the experiment's `train`, the arm's own settings, its component
    weights, the seed, and the chosen learning rate when there is one."""
    return arm_of(cfg, arm).train_args(seed, learning_rate)


def report_facts(cfg: ExperimentConfig):
    """What the report needs of this config (report/facts.py), so that the report never reads the config itself."""
    from coherentize.report.facts import ExperimentFacts

    return ExperimentFacts(
        model=str(cfg.model.name_or_path), seeds=list(cfg.seeds), n_boot=cfg.eval.n_boot,
        jailbreak_sources=list(cfg.eval.jailbreak_sources), lora=bool(cfg.lora.enabled),
        families=list(cfg.variations.families), jailbreak_families=list(cfg.variations.jailbreak_families),
        arm_labels={name: d.label for name, d in cfg.arm_definitions.items() if d.label}, jobs=cfg.jobs,
        config=to_dict(cfg), pressure=training_facts(cfg.pressure))
