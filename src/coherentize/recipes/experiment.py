"""The staged experiment behind `coherentize run`: organism -> variations -> [mine] -> baseline eval -> [learning
rate chosen on validation] -> train -> eval -> report. The mine stage runs only for arms trained on mined or random
clusters (ArmDefinition.data); the selection only when select.learning_rates is set (recipes/selection.py).

Every stage writes into ``<out_dir>/stages/<stage>-<hash>/`` and marks itself done with ``done.json`` written last;
the hash covers the stage's own config (less cosmetic settings: COSMETIC_TRAIN_FIELDS, COSMETIC_EVAL_FIELDS), the
hashes of the stages it reads and the code (package version and source hash), so a re-run skips finished stages, a
changed config or code re-runs exactly what it affects, and a killed run resumes at the stage it was in (training
resumes from its last checkpoint); `force` re-runs named stages anyway. Each stage is one library call with its own
config; the evaluation stages share one loaded base model and swap the arms' adapters (EvalModels). Arms run on the
same clusters and seeds; ``control`` is the same steps on the same anchors and responses with no variation (plain SFT
of the anchors on their own responses).

    coherentize run                       # the default experiment (configs/default.yaml)
    coherentize run configs/bct_jailbreak.yaml --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from coherentize.clusters import Cluster, Variation, load_clusters, write_clusters
from coherentize.config import to_dict
from coherentize.errors import CoherentizeError
from coherentize.io import write_json
from coherentize.evaluate.suite import EvalConfig
from coherentize.recipes.train_job import DataConfig, LoraSettings, TrainJob
from coherentize.models import ModelConfig
from coherentize.recipes.organism import OrganismConfig
from coherentize.recipes.selection import SelectConfig
from coherentize.trainer import ConsistencyConfig
from coherentize.variations.filter import FilterConfig

COMPONENTS = {"output-kl": "output", "bct": "bct", "activation": "act", "on-policy": "on_policy"}
STAGES = ("organism", "variations", "mine", "baseline", "train", "eval", "report")
READS = {"organism": set(), "variations": {"organism"}, "mine": {"organism", "variations"},
         "baseline": {"organism", "variations"}, "train": {"organism", "variations", "mine"},
         "eval": {"organism", "variations", "train"},
         "report": {"organism", "variations", "baseline", "train", "eval"}}
ARM_DATA = ("variations", "mined", "random")
"""The stages each stage reads (what `--stage` requires to be done)."""


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
    disagrees with itself most, coherentize.mining), or random (as many clusters drawn at random, per seed)."""


@dataclass
class MineConfig:
    """The mine stage (run only when an arm trains on mined or random clusters): the training clusters scored by
    the model's incoherence before training (coherentize.mining: decision flips, output JS, activation distance)."""

    top_k: int = 16
    """Clusters the mined arm trains on (and the random arm draws)."""
    layers: list[int] = field(default_factory=list)
    """Residual-stream layers of the activation-distance term (empty: none)."""
    max_new_tokens: int = 32
    """Tokens of each member's greedy answer (judged for refusal flips)."""


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
            _arm_train_args(cfg, name, cfg.seeds[0] if cfg.seeds else 0)
        except (ValueError, TypeError) as e:
            raise CoherentizeError(f"arm_definitions.{name}.train: {e}") from None
    sel = cfg.select
    unknown = [a for a in sel.arms if a not in cfg.arms]
    if unknown:
        raise CoherentizeError(f"select.arms: {unknown[0]!r} is not one of the experiment's arms {cfg.arms}.")
    if any(not (math.isfinite(lr) and lr > 0) for lr in sel.learning_rates):
        raise CoherentizeError(f"select.learning_rates: every rate must be > 0, got {sel.learning_rates}.")
    for name, spec in cfg.arm_definitions.items():
        if spec.data not in ARM_DATA:
            raise CoherentizeError(f"arm_definitions.{name}.data: {spec.data!r}; use {', '.join(ARM_DATA)}.")
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
    _check_overlap(cfg)
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
        resolve_layers(_arm_train_args(cfg, arm, cfg.seeds[0]).act_layers, n_layers, where)


# Settings that change no result: left out of a stage's cache key so that editing them re-uses finished stages.
COSMETIC_TRAIN_FIELDS = frozenset({
    "output_dir", "run_name", "project", "report_to", "logging_dir", "logging_steps", "logging_strategy",
    "logging_first_step", "logging_nan_inf_filter", "log_level", "log_level_replica", "log_on_each_node",
    "disable_tqdm", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "save_strategy", "save_steps",
    "save_total_limit", "save_on_each_node", "save_only_model", "save_safetensors", "resume_from_checkpoint",
    "skip_memory_metrics", "include_num_input_tokens_seen", "torch_empty_cache_steps", "ddp_timeout", "push_to_hub",
    "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
})
COSMETIC_EVAL_FIELDS = frozenset({"judge_api_key_env", "judge_concurrency", "judge_retries"})
# Source files that no cached stage runs: the report stage always re-runs, the CLI only builds the config.
UNHASHED_SOURCES = ("report/", "commands/", "cli.py", "__main__.py")


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
    if cfg.organism.enabled:
        from coherentize.recipes.organism import check_organism_frames

        check_organism_frames(cfg.organism, cfg.eval.jailbreak_sources)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def source_hash() -> str:
    """sha256 (16 hex) over the package's .py files (relative path and bytes), UNHASHED_SOURCES left out: part of
    every stage key, so that a code change re-runs the stages instead of reading old results."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(UNHASHED_SOURCES):
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_version() -> dict:
    """What a stage's results depend on besides its config: the package version and its source hash."""
    from coherentize import __version__

    return {"version": __version__, "source": source_hash()}


def without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


class Stages:
    """Stage folders, done markers, wall times and the log of one experiment.

    Nothing is written until a stage starts (begin), so a run that fails its checks leaves no folder behind."""

    def __init__(self, cfg: ExperimentConfig, log=print, force=()):
        self.cfg, self.log, self.force = cfg, log, set(force)
        self.root = Path(cfg.out_dir)
        self.hashes: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.code = code_version()
        self.seconds: dict[str, float] = {}  # stage name -> wall seconds of the run that produced it
        self.reused: list[str] = []
        self._t: dict[str, float] = {}

    def key(self, name: str, config, *deps: str) -> str:
        h = _digest({"config": config, "deps": [self.hashes[d] for d in deps], "code": self.code, "v": 2})
        self.hashes[name] = h
        return h

    def dir(self, name: str) -> Path:
        name = self.aliases.get(name, name)
        return self.root / "stages" / f"{name}-{self.hashes[name]}"

    def alias(self, name: str, target: str) -> None:
        """name is the same stage as target (same config and inputs), run under target's name: a selection candidate
        that is also a seed's run."""
        self.aliases[name] = target
        self.hashes[name] = self.hashes[target]

    def forced(self, name: str) -> bool:
        return name.split("/")[0] in self.force

    def done(self, name: str) -> dict | None:
        """The stage's done.json, or None when it has not run (or is forced and has not re-run in this process)."""
        if self.forced(name) and name not in self._t:
            return None
        marker = self.dir(name) / "done.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "config.json", to_dict(self.cfg))

    def begin(self, name: str, title: str) -> Path | None:
        """Start a stage: log it, write the experiment's config, empty a forced stage's folder; returns the folder
        (None for the report, which has no stage folder)."""
        self.log(f"== stage {name}: {title}")
        self.write_config()
        self._t[name] = time.time()
        if name not in self.hashes:
            return None
        d = self.dir(name)
        if self.forced(name) and d.exists():
            import shutil

            shutil.rmtree(d)
        return d

    def finish(self, name: str, info: dict) -> dict:
        seconds = round(time.time() - self._t[name], 3)
        self.seconds[name] = seconds
        info = {**info, "seconds": seconds}
        write_json(self.dir(name) / "done.json", info)
        self.log(f"   {name} done in {seconds:.1f} s")
        return info

    def reuse(self, name: str, info: dict, what: str = "") -> dict:
        """A finished stage read from its folder: its wall time is the one recorded when it ran."""
        self.seconds[name] = float(info.get("seconds", 0.0))
        self.reused.append(name)
        self.log(f"-- {name}: done earlier ({self.seconds[name]:.1f} s){f', {what}' if what else ''}")
        return info

    def write_summary(self, t0: float) -> Path:
        """<out_dir>/summary.json: stage_seconds (stage -> s), total_seconds (their sum), reused (stages read from
        earlier runs, their seconds as recorded then), wall_seconds (this invocation), code (version, source hash)."""
        body = {"stage_seconds": dict(self.seconds), "total_seconds": round(sum(self.seconds.values()), 3),
                "reused": list(self.reused), "wall_seconds": round(time.time() - t0, 3), "code": self.code}
        return write_json(self.root / "summary.json", body)


def _organism_model(cfg: ExperimentConfig, st: Stages) -> ModelConfig:
    from coherentize.models import cache_dir
    from coherentize.recipes.organism import build_organism

    if not cfg.organism.enabled:
        return cfg.model
    info = st.done("organism")
    if info is None:
        d = st.begin("organism", "refusal-tuned model organism")
        # Shared between experiments (built once per recipe, model and code version); a forced stage builds its own.
        root = d / "build" if st.forced("organism") else cache_dir() / "organisms" / f"code-{st.code['source']}"
        folder = build_organism(cfg.model, cfg.organism, root=root, log=st.log)
        info = st.finish("organism", {"folder": str(folder), **json.loads((folder / "organism.json").read_text())})
    else:
        st.reuse("organism", info, info["folder"])
    return dataclasses.replace(cfg.model, name_or_path=info["folder"], gguf_file=None)


def _build_clusters(cfg: ExperimentConfig, model_cfg: ModelConfig, out: Path, log) -> dict:
    """train.jsonl and heldout.jsonl: anchors from the shipped sets through the one cluster builder
    (variations.build), plus harmful anchors wrapped in training jailbreak families, kept by the pair filter."""
    from coherentize.variations import families_by_name, load_prompt_set
    from coherentize.variations.build import AugmentSummary, build_clusters
    from coherentize.variations.prompt_sets import PromptItem

    v = cfg.variations
    if v.clusters_file:
        allc = load_clusters(v.clusters_file)
        train = [c for c in allc if c.split in (None, "train")]
        held = [c for c in allc if c.split == "test"]
    else:
        fams = families_by_name(v.families)
        embed = paraphraser = None
        if v.embedder:
            from coherentize.variations.filter import load_embedder

            embed = load_embedder(v.embedder)
        if v.paraphrase_model:
            from coherentize.models import load_model
            from coherentize.variations.paraphrase import LocalParaphraser

            pm, ptok = load_model(ModelConfig(name_or_path=v.paraphrase_model, device=model_cfg.device))
            paraphraser = LocalParaphraser(pm, ptok)
        summary = AugmentSummary(cfg=v.filter if embed is not None else None)
        train, held = [], []
        for split, dest in (("train", train), ("test", held)):
            for name in v.prompt_sets:
                items = load_prompt_set(name, split)
                items = items[: v.max_prompts] if v.max_prompts else items
                items = [PromptItem(f"{name}-{it.id}", it.prompt, {**it.tags, "split": split, "set": name})
                         for it in items]
                built = build_clusters(items, fams, v.seed, v.per_family, paraphraser, v.n_paraphrases, embed,
                                       v.filter, v.filter_families, summary)
                dest += [c for c in built if c.variations]
        if embed is not None or paraphraser is not None:
            log(summary.table())
    counts = {"benign_train": len(train), "benign_heldout": len(held)}
    if v.n_harmful:
        counts.update(_harmful_clusters(cfg, model_cfg, train))
    if not train:
        raise CoherentizeError("variations: no training clusters were built; check prompt_sets and families.")
    write_clusters(out / "train.jsonl", train)
    if held:
        write_clusters(out / "heldout.jsonl", held)
    log(f"   clusters: {counts}")
    return counts


def _harmful_clusters(cfg: ExperimentConfig, model_cfg: ModelConfig, train: list[Cluster]) -> dict:
    """The recipe step of the BCT reproduction: harmful train-split requests wrapped in the training jailbreak
    families (variations.build.wrap_requests), the model's answers judged, and the pair filter applied. The target is
    the model's own refusal to the clean request: no harmful text is ever a target, and answers to wrapped requests
    are only judged, never kept."""
    from coherentize import sources
    from coherentize.chat import is_chat_model
    from coherentize.evaluate.judges import is_refusal
    from coherentize.generation import generate
    from coherentize.models import load_model
    from coherentize.variations.build import filter_pairs, wrap_requests
    from coherentize.variations.templates import template_families

    v = cfg.variations
    fams = template_families(v.template_sources, v.jailbreak_families)
    harmful = sources.strongreject(split="train", n=v.n_harmful)
    clusters = wrap_requests(harmful, fams)
    model, tok = load_model(model_cfg)
    chat = is_chat_model(tok, model_cfg.prompt_format)
    answers = generate(model, tok, [c.anchor for c in clusters], chat, cfg.response_max_new_tokens)
    refused_clean = {c.id: is_refusal(a) for c, a in zip(clusters, answers)}
    refused_wrapped = None
    if v.pair_filter == "refused_clean_complied_wrapped":
        keys = [(c.id, x.family) for c in clusters if refused_clean[c.id] for x in c.variations]
        prompts = [x.prompt for c in clusters if refused_clean[c.id] for x in c.variations]
        outs = generate(model, tok, prompts, chat, cfg.response_max_new_tokens) if prompts else []
        refused_wrapped = {k: is_refusal(o) for k, o in zip(keys, outs)}
        del outs
    for c, a in zip(clusters, answers):
        if refused_clean[c.id]:
            c.continuations = [a]
    kept = filter_pairs(clusters, refused_clean, v.pair_filter, refused_wrapped)
    train.extend(kept)
    del model
    return {"harmful_requested": len(harmful), "harmful_refused_clean": sum(refused_clean.values()),
            "harmful_kept": len(kept), "harmful_pairs_kept": sum(len(c.variations) for c in kept)}


def _control_clusters(path: Path, out: Path) -> Path:
    """The control arm's data: every variation replaced by the anchor itself (so only SFT on anchors remains)."""
    cs = load_clusters(path)
    write_clusters(out, [Cluster(c.id, c.anchor, [Variation(c.anchor, "anchor_copy")] * len(c.variations),
                                 c.continuations, c.tags) for c in cs])
    return out


class AdaptersOff:
    """A PeftModel seen with its adapters disabled: the base model's function without a second copy in memory
    (peft's LoRA layers return exactly base_layer(x) while disabled)."""

    def __init__(self, peft_model):
        self._peft = peft_model

    def __call__(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._peft, name)


class EvalModels:
    """The models of the evaluation stages, loaded once per process: the base model (the organism), each LoRA arm's
    adapter loaded onto it and switched on in turn (the previous one dropped), and as the reference for capability
    KL the same model with its adapters disabled. An arm that trained every weight loads its own folder."""

    def __init__(self, model_cfg: ModelConfig):
        self.model_cfg = model_cfg
        self._base = self._tok = self._peft = self._active = None
        self._n = 0

    def _load_base(self):
        if self._base is None:
            from coherentize.models import load_model

            self._base, self._tok = load_model(self.model_cfg)
        return self._base, self._tok

    def original(self):
        """(model, tokenizer) computing the base model's function."""
        base, tok = self._load_base()
        return (AdaptersOff(self._peft) if self._peft is not None else base), tok

    def trained(self, model_dir: Path):
        """(model, tokenizer) of a trained arm from its saved model folder (adapter or full weights)."""
        if not (model_dir / "adapter_config.json").is_file():
            from coherentize.models import load_model

            return load_model(dataclasses.replace(self.model_cfg, name_or_path=str(model_dir), gguf_file=None))
        from peft import PeftModel

        base, tok = self._load_base()
        self._n += 1
        name = f"arm{self._n}"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(base, str(model_dir), adapter_name=name).eval()
        else:
            self._peft.load_adapter(str(model_dir), adapter_name=name)
            self._peft.set_adapter(name)
            self._peft.delete_adapter(self._active)
            self._peft.eval()
        self._active = name
        return self._peft, tok


def _evaluate(model, tok, reference, cfg: ExperimentConfig, train_clusters_path: Path, out: Path, model_name: str,
              quiet: bool = False):
    from coherentize.evaluate import run_suite, write_results

    results = run_suite(model, tok, cfg.eval, reference_model=reference, train_clusters=load_clusters(train_clusters_path),
                        model_name=model_name, quiet=quiet)
    write_results(results, out)
    trackers = cfg.train.report_to if isinstance(cfg.train.report_to, list) else [cfg.train.report_to]
    trackers = [t for t in trackers if t in ("tensorboard", "wandb")]
    if trackers:  # the evaluation figures go where training's losses go (one TensorBoard run per stage)
        from coherentize.integrations.tracking import log_scalars, scalars

        log_scalars(scalars(results), trackers, Path(cfg.out_dir) / "tensorboard" / out.parent.name / out.name)
    return results


def _baseline_stage(cfg: ExperimentConfig, st: "Stages", models: EvalModels, train_path: Path, model_name: str,
                    quiet: bool = False) -> None:
    bdir = st.begin("baseline", "evaluation before training")
    model, tok = models.original()
    res = _evaluate(model, tok, None, cfg, train_path, bdir, model_name, quiet)
    st.finish("baseline", {"suites": list(res["suites"])})


def _run_job(cfg: ExperimentConfig, st: "Stages", models: EvalModels, model_cfg: ModelConfig, job: dict,
             train_path: Path, held_path: Path, model_name: str, quiet: bool = False) -> None:
    """One job: the baseline evaluation, or an arm-seed's training (when not done) then its evaluation."""
    if job["kind"] == "baseline":
        _baseline_stage(cfg, st, models, train_path, model_name, quiet)
        return
    name = job["name"]
    if job["train"]:
        targs = dataclasses.replace(job["targs"], disable_tqdm=True) if quiet else job["targs"]
        _train_arm(cfg, st, name, job["arm"], targs, model_cfg, job["data"], held_path)
    if job["eval"]:
        edir = st.begin(f"eval/{name}", "evaluation of the arm's model")
        model, tok = models.trained(st.dir(f"train/{name}") / "model")
        reference, _ = models.original()
        _evaluate(model, tok, reference, cfg, train_path, edir, model_name, quiet)
        st.finish(f"eval/{name}", {"arm": job["arm"], "seed": job["seed"]})


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


def _worker_job(st: "Stages", model_cfg: ModelConfig, job: dict, train_path: Path, held_path: Path,
                model_name: str) -> dict[str, float]:
    """A job in its own process (spawned: nothing inherited but the arguments). Returns the stages' wall times."""
    global _WORKER_MODELS
    st.log, st.seconds = _print, {}
    if _WORKER_MODELS is None or _WORKER_MODELS.model_cfg != model_cfg:
        _WORKER_MODELS = EvalModels(model_cfg)
    _run_job(st.cfg, st, _WORKER_MODELS, model_cfg, job, train_path, held_path, model_name, quiet=True)
    return st.seconds


def _run_jobs(cfg: ExperimentConfig, st: "Stages", model_cfg: ModelConfig, jobs: list[dict], train_path: Path,
              held_path: Path, model_name: str) -> None:
    """Run the jobs cfg.jobs at a time in spawned processes of cores / jobs torch threads each. An arm-seed's
    training and evaluation are jobs of their own, the evaluation queued once its training is done (small jobs
    leave less idle time at the end). The first failure stops the others (finished stages stay done) and is raised
    here."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ready, after = [], {}  # after: arm name -> its evaluation, queued when its training is done
    for job in jobs:
        if job["kind"] == "arm" and job["train"] and job["eval"]:
            ready.append({**job, "eval": False})
            after[job["name"]] = {**job, "train": False}
        else:
            ready.append(job)
    total = len(ready) + len(after)
    workers = min(cfg.jobs, total)
    threads = max(1, cpu_cores() // cfg.jobs)
    st.log(f"-- {total} jobs, {workers} at a time, {threads} torch thread(s) each")
    log, st.log = st.log, None  # the worker gets its own logger (print)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads,))

    def label(job: dict) -> str:
        return "baseline" if job["kind"] == "baseline" else f"{'train' if job['train'] else 'eval'}/{job['name']}"

    finished, futures = False, {}
    try:
        for job in ready:
            futures[pool.submit(_worker_job, st, model_cfg, job, train_path, held_path, model_name)] = job
        left, n_done = set(futures), 0
        while left:
            done, left = wait(left, return_when=FIRST_COMPLETED)
            for f in done:
                st.seconds.update(f.result())  # raises the job's error
                job, n_done = futures[f], n_done + 1
                log(f"   job {label(job)} done ({n_done} of {total})")
                nxt = after.pop(job["name"], None) if job["kind"] == "arm" and job["train"] else None
                if nxt is not None:
                    g = pool.submit(_worker_job, st, model_cfg, nxt, train_path, held_path, model_name)
                    futures[g] = nxt
                    left.add(g)
        finished = True
    except BrokenProcessPool:
        raise CoherentizeError("a job's process died without an error (killed, or out of memory?); finished stages "
                               "are kept: run again to resume, or with jobs: 1.") from None
    finally:
        st.log = log
        if not finished:  # stop the jobs still running
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _print(msg: str) -> None:
    print(msg, flush=True)  # each line as it happens, also into a file (nohup ... > run.log)


def run_experiment(cfg: ExperimentConfig, only: str | None = None, log=_print, force=()) -> Path:
    """Run (or resume) every stage; returns the report path. only: run just that stage (its inputs must be done).
    force: stages (organism, variations, baseline, train, eval) to run again although they are done.

    A run that fails before any stage finished leaves no output folder behind. Each stage's wall time is logged as it
    ends and written to <out_dir>/summary.json (Stages.write_summary)."""
    validate(cfg)
    if only is not None and only not in STAGES:
        raise CoherentizeError(f"--stage {only!r}: choose one of {', '.join(STAGES)}.")
    bad = [f for f in force if f not in STAGES[:-1]]
    if bad:
        raise CoherentizeError(f"--force {','.join(bad)}: choose from {', '.join(STAGES[:-1])} "
                               "(the report is always written).")
    st = Stages(cfg, log, force)
    fresh = not st.root.exists()
    try:
        return _run_stages(cfg, st, only)
    except Exception:
        if fresh and st.root.is_dir() and not any(st.root.glob("stages/**/done.json")):
            import shutil

            shutil.rmtree(st.root, ignore_errors=True)
        raise


def _run_stages(cfg: ExperimentConfig, st: Stages, only: str | None) -> Path:
    from coherentize.recipes import selection

    t0, log = time.time(), st.log

    def need(name: str):
        """With --stage, a stage that the chosen one reads must be done; stages it does not read are skipped."""
        if only is not None and name.split("/")[0] in READS[only] and st.done(name) is None:
            raise CoherentizeError(f"--stage {only}: stage {name!r} has not run yet for this config "
                                   f"({st.dir(name)}); run `coherentize run` without --stage first.")

    def wanted(name: str) -> bool:
        return only is None or only == name

    def cached(name: str, what: str = "") -> bool:
        info = st.done(name)
        if info is not None:
            st.reuse(name, info, what)
        return info is not None

    # organism
    st.key("organism", {"model": to_dict(cfg.model), "organism": to_dict(cfg.organism)})
    if cfg.organism.enabled and st.done("organism") is None:
        need("organism")
    model_cfg = _organism_model(cfg, st)
    models = EvalModels(model_cfg)
    model_name = str(model_cfg.name_or_path)
    eval_key = {"eval": without(to_dict(cfg.eval), COSMETIC_EVAL_FIELDS)}

    # variations
    st.key("variations", {"variations": to_dict(cfg.variations), "r": cfg.response_max_new_tokens,
                          "sources": cfg.eval.jailbreak_sources}, "organism")
    vdir = st.dir("variations")
    if not cached("variations"):
        need("variations")
        if wanted("variations"):
            st.begin("variations", "training and held-out clusters")
            st.finish("variations", _build_clusters(cfg, model_cfg, vdir, log))
    train_path, held_path = vdir / "train.jsonl", vdir / "heldout.jsonl"

    # mine (only for arms that train on mined or random clusters)
    mine_dir = None
    if any(arm_data(cfg, a) != "variations" for a in cfg.arms):
        st.key("mine", {"mine": to_dict(cfg.mine), "seeds": cfg.seeds, "batch": cfg.eval.batch_size}, "organism",
               "variations")
        mine_dir = st.dir("mine")
        if not cached("mine"):
            need("mine")
            if wanted("mine"):
                st.begin("mine", "training clusters ranked by the model's incoherence")
                model, tok = models.original()
                st.finish("mine", _mine(cfg, model, tok, model_cfg.prompt_format, train_path, mine_dir, log))

    # baseline eval (with jobs > 1 it runs beside the arms' jobs)
    parallel = cfg.jobs > 1 and only is None
    st.key("baseline", eval_key, "organism", "variations")
    baseline_todo = False
    if not cached("baseline"):
        need("baseline")
        baseline_todo = wanted("baseline")
    if baseline_todo and not parallel:
        _baseline_stage(cfg, st, models, train_path, model_name)

    def train_key(arm: str, seed: int, targs) -> dict:
        return {"arm": arm, "seed": seed, "train": without(to_dict(targs), COSMETIC_TRAIN_FIELDS),
                "lora": to_dict(cfg.lora), "r": cfg.response_max_new_tokens,
                "heldout_per_cluster": cfg.heldout_examples_per_cluster}

    def train_data(arm: str, seed: int):
        return {"variations": train_path, "mined": mine_dir and mine_dir / "mined.jsonl",
                "random": mine_dir and mine_dir / f"random-seed{seed}.jsonl"}[arm_data(cfg, arm)]

    def train_todo(stage: str, arm: str, seed: int, targs) -> bool:
        """Key the training stage; True when it must run in this invocation."""
        deps = ("organism", "variations") + (("mine",) if arm_data(cfg, arm) != "variations" else ())
        st.key(f"train/{stage}", train_key(arm, seed, targs), *deps)
        if cached(f"train/{stage}"):
            return False
        need(f"train/{stage}")
        return wanted("train")

    def train_stage(stage: str, arm: str, seed: int, targs) -> bool:
        """Key the training stage and run it unless done; True when its model exists."""
        if train_todo(stage, arm, seed, targs):
            _train_arm(cfg, st, stage, arm, targs, model_cfg, train_data(arm, seed), held_path)
        return st.done(f"train/{stage}") is not None

    # learning rate per arm, chosen on the validation split (select)
    chosen: dict[str, float] = {}
    candidates: dict[tuple[str, float], str] = {}
    selected: dict[str, dict] = {}  # arm -> the chosen rate and every candidate's validation score
    val_prompts = None
    for arm in cfg.arms:
        if not selects(cfg, arm):
            continue
        rows = []
        for lr in cfg.select.learning_rates:
            stage = f"{arm}@lr{lr:g}-seed{cfg.select.seed}"
            if not train_stage(stage, arm, cfg.select.seed, _arm_train_args(cfg, arm, cfg.select.seed, lr)):
                continue
            candidates[(arm, lr)] = stage
            vname = f"train/{arm}@lr{lr:g}-val"
            st.key(vname, {"select": to_dict(cfg.select), "train_jailbreak": cfg.variations.jailbreak_families,
                           "sources": cfg.variations.template_sources, "max_new_tokens": cfg.eval.max_new_tokens},
                   f"train/{stage}")
            info = st.done(vname)
            if info is not None:
                st.reuse(vname, info)
            elif wanted("train"):
                st.begin(vname, f"validation of {arm} at learning rate {lr:g}")
                if val_prompts is None:
                    val_prompts = selection.validation_prompts(cfg.select, cfg.variations)
                model, tok = models.trained(st.dir(f"train/{stage}") / "model")
                score = selection.validation_score(model, tok, val_prompts, cfg.eval.max_new_tokens,
                                                   model_cfg.prompt_format)
                info = st.finish(vname, {"arm": arm, "learning_rate": lr, **score})
            else:
                continue
            rows.append(info)
        if len(rows) == len(cfg.select.learning_rates):
            best = max(rows, key=lambda r: (r["harmonic_mean"], -r["learning_rate"]))
            chosen[arm] = best["learning_rate"]
            selected[arm] = {"chosen_learning_rate": best["learning_rate"], "label": _arm_label(cfg, arm),
                              "candidates": [without(r, {"seconds"}) for r in rows]}
            log(f"   {arm}: learning rate {best['learning_rate']:g} chosen on validation "
                f"(harmonic mean {best['harmonic_mean']:.3f}; " +
                ", ".join(f"{r['learning_rate']:g}: {r['harmonic_mean']:.3f}" for r in rows) + ")")
    if selected:
        st.root.mkdir(parents=True, exist_ok=True)
        write_json(st.root / "selection.json", selected)

    # train and eval per arm and seed: one job each (training, then evaluation), run here or in cfg.jobs processes
    runs, jobs = [], []
    for arm in cfg.arms:
        if selects(cfg, arm) and arm not in chosen:
            if only is None or only == "train":
                raise CoherentizeError(f"select: no learning rate was chosen for {arm}.")
            continue  # --stage of another kind: the selection has not run, so neither have these stages
        for seed in cfg.seeds:
            name = f"{arm}-seed{seed}"
            lr = chosen.get(arm)
            targs = _arm_train_args(cfg, arm, seed, lr)
            job = {"kind": "arm", "name": name, "arm": arm, "seed": seed, "targs": targs, "train": False,
                   "eval": False, "data": None}
            if lr is not None and seed == cfg.select.seed and (arm, lr) in candidates:
                # the candidate trained at this seed and the chosen rate IS this seed's run
                st.alias(f"train/{name}", f"train/{candidates[(arm, lr)]}")
            elif train_todo(name, arm, seed, targs):
                job.update(train=True, data=train_data(arm, seed))
            tdir = st.dir(f"train/{name}")
            st.key(f"eval/{name}", eval_key, f"train/{name}")
            edir = st.dir(f"eval/{name}")
            if not cached(f"eval/{name}"):
                need(f"eval/{name}")
                job["eval"] = wanted("eval")
            if job["train"] or job["eval"]:
                jobs.append(job)
            runs.append({"arm": arm, "seed": seed, "train_dir": str(tdir), "eval_dir": str(edir),
                         "learning_rate": targs.learning_rate})
    if parallel and (jobs or baseline_todo):
        _run_jobs(cfg, st, model_cfg, ([{"kind": "baseline"}] if baseline_todo else []) + jobs, train_path,
                  held_path, model_name)
    else:
        for job in jobs:
            _run_job(cfg, st, models, model_cfg, job, train_path, held_path, model_name)

    # report
    report_path = st.root / "report.md"
    if wanted("report"):
        for r in runs:
            if not (Path(r["eval_dir"]) / "done.json").is_file():
                raise CoherentizeError(f"--stage report: evaluation of {r['arm']} seed {r['seed']} has not run yet.")
        from coherentize.report import write_report

        st.begin("report", "report.md and report.html")
        st.write_summary(t0)  # the report reads the stage times
        organism_info = st.done("organism") if cfg.organism.enabled else None
        report_path = write_report(st.root, cfg, organism_info, st.dir("baseline"), runs,
                                   json.loads((vdir / "done.json").read_text()))
        st.seconds["report"] = round(time.time() - st._t["report"], 3)
        log(f"   report done in {st.seconds['report']:.1f} s")
        log(f"report: {report_path} and {report_path.with_suffix('.html')} ({time.time() - t0:.0f} s)")
    if st.seconds:
        st.write_summary(t0)
    return report_path


def selects(cfg: ExperimentConfig, arm: str) -> bool:
    """Whether the arm's learning rate is chosen on validation (SelectConfig)."""
    sel = cfg.select
    if not sel.learning_rates:
        return False
    return arm in sel.arms if sel.arms else arm_components(cfg, arm)[0] != "control"


def arm_data(cfg: ExperimentConfig, arm: str) -> str:
    spec = cfg.arm_definitions.get(arm)
    return spec.data if spec is not None else "variations"


def _mine(cfg: ExperimentConfig, model, tok, prompt_format: str, train_path: Path, out: Path, log) -> dict:
    """The mine stage: every training cluster scored by the model's incoherence, the top_k written as mined.jsonl and,
    per seed, as many clusters drawn at random as random-seed<s>.jsonl (the comparison: targeting vs coverage)."""
    from coherentize.chat import is_chat_model
    from coherentize.mining import mine_clusters, random_clusters, top_clusters

    pool = load_clusters(train_path)
    ranked = mine_clusters(model, tok, pool, chat=is_chat_model(tok, prompt_format), layers=cfg.mine.layers,
                           max_new_tokens=cfg.mine.max_new_tokens, batch_size=cfg.eval.batch_size)
    mined = top_clusters(ranked, cfg.mine.top_k)
    out.mkdir(parents=True, exist_ok=True)
    write_clusters(out / "mined.jsonl", mined)
    for seed in cfg.seeds:
        write_clusters(out / f"random-seed{seed}.jsonl", random_clusters(pool, len(mined), seed))
    scores = [{"id": r.cluster.id, "score": r.score} for r in ranked]
    write_json(out / "ranked.json", scores, indent=1)
    top = [r.score for r in ranked[: len(mined)]]
    log(f"   mined {len(mined)} of {len(pool)} clusters (score {min(top):.3f}..{max(top):.3f}; "
        f"pool mean {sum(s['score'] for s in scores) / len(scores):.3f})")
    return {"pool": len(pool), "mined": len(mined), "mined_mean_score": sum(top) / len(top),
            "pool_mean_score": sum(s["score"] for s in scores) / len(scores)}


def _arm_label(cfg: ExperimentConfig, arm: str) -> str:
    spec = cfg.arm_definitions.get(arm)
    return spec.label if spec is not None and spec.label else arm


def _arm_train_args(cfg: ExperimentConfig, arm: str, seed: int, learning_rate: float | None = None):
    """The training arguments of one arm and seed: the experiment's `train`, the arm's own settings, its component
    weights, the seed, and the chosen learning rate when there is one."""
    import typing

    from coherentize.config import _coerce

    _, weights, overrides = arm_components(cfg, arm)
    hints = typing.get_type_hints(ConsistencyConfig)
    overrides = {k: _coerce(v, hints.get(k, typing.Any), f"arm_definitions.{arm}.train.{k}")
                 for k, v in overrides.items()}
    if learning_rate is not None:
        overrides["learning_rate"] = float(learning_rate)
    return dataclasses.replace(cfg.train, **overrides, seed=seed, data_seed=seed, output_weight=weights["output"],
                               bct_weight=weights["bct"], act_weight=weights["act"],
                               on_policy_weight=weights["on_policy"])


def _train_arm(cfg: ExperimentConfig, st: Stages, name: str, arm: str, targs, model_cfg: ModelConfig,
               train_path: Path, held_path: Path) -> None:
    """One training stage: the arm's data (control: anchors copied in place of the variations), one TrainJob."""
    from coherentize.recipes.train_job import run_training

    tdir = st.begin(f"train/{name}", "consistency training")
    tdir.mkdir(parents=True, exist_ok=True)
    control = arm_components(cfg, arm)[0] == "control"
    data_file = _control_clusters(train_path, tdir / "control.jsonl") if control else train_path
    saves = max(1, (targs.max_steps or 1) // 4)
    job = TrainJob(
        model=model_cfg, lora=cfg.lora,
        data=DataConfig(train_file=str(data_file), split=None,
                        eval_file=str(held_path) if held_path.is_file() else None, eval_split=None,
                        response_max_new_tokens=cfg.response_max_new_tokens,
                        # every arm and seed answers the same anchors with the same (organism) model: generate once
                        responses_cache=str(held_path.parent / "responses.jsonl"),  # the variations stage's folder
                        heldout_examples_per_cluster=cfg.heldout_examples_per_cluster),
        train=dataclasses.replace(targs, output_dir=str(tdir), save_strategy="steps", save_steps=saves,
                                  save_total_limit=1),
    )
    run_training(job, resume=True)
    st.finish(f"train/{name}", {"arm": arm, "seed": targs.seed})
