"""The staged experiment behind `coherentize run`: organism -> variations -> baseline eval -> train -> eval -> report.

Every stage writes into ``<out_dir>/stages/<stage>-<hash>/`` and marks itself done with ``done.json`` written last;
the hash covers the stage's own config and the hashes of the stages it reads, so a re-run skips finished stages, a
changed config re-runs exactly what it affects, and a killed run resumes at the stage it was in (training resumes
from its last checkpoint). Arms run on the same clusters and seeds; ``control`` is the same steps on the same
anchors and responses with no variation (plain SFT of the anchors on their own responses).

    coherentize run                       # the default experiment (configs/default.yaml)
    coherentize run configs/bct_jailbreak.yaml --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from coherentize.clusters import Cluster, Variation, load_clusters, write_clusters
from coherentize.config import to_dict
from coherentize.errors import CoherentizeError
from coherentize.evaluate.suite import EvalConfig
from coherentize.recipes.train_job import DataConfig, LoraSettings, TrainJob
from coherentize.models import ModelConfig
from coherentize.recipes.organism import OrganismConfig
from coherentize.trainer import ConsistencyConfig

COMPONENTS = {"output-kl": "output", "bct": "bct", "activation": "act"}
STAGES = ("organism", "variations", "baseline", "train", "eval", "report")


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
    n_harmful: int = 0
    """Harmful train-split requests used as anchors, wrapped in jailbreak_families (the BCT reproduction)."""
    jailbreak_families: list[str] = field(default_factory=list)
    """Jailbreak template families that wrap the harmful anchors in training; evaluation must not score them."""
    keep_refused_only: bool = True
    """Keep a harmful anchor only if the model refuses it when asked directly (Irpan et al.); its refusal is the target."""


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
    """Arms: control, output-kl, bct, activation, or '+'-joined combinations (e.g. output-kl+activation)."""
    component_weights: dict = field(default_factory=lambda: {"output": 1.0, "bct": 1.0, "act": 1.0})
    """Weight given to each component an arm names (output, bct, act)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; every arm runs each seed, and figures pool prompts and seeds."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Adapters of the consistency training (enabled: false trains every weight)."""
    train: ConsistencyConfig = field(default_factory=lambda: ConsistencyConfig(output_dir="unused"))
    """Base training arguments; an arm sets the component weights, a seed sets seed/data_seed."""
    response_max_new_tokens: int = 32
    """Length of the anchors' responses (the shared continuation and BCT target)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The evaluation suite run before training and after each arm and seed."""


def arm_weights(arm: str, weights: dict) -> dict[str, float]:
    """{'output': w, 'bct': w, 'act': w} for an arm name; control is plain SFT (bct on the anchors themselves)."""
    if arm == "control":
        return {"output": 0.0, "bct": 1.0, "act": 0.0}
    parts = arm.split("+")
    unknown = [p for p in parts if p not in COMPONENTS]
    if unknown or not parts:
        raise CoherentizeError(f"arms: unknown arm {arm!r}; use control, {', '.join(COMPONENTS)} or '+'-joined "
                               "combinations such as output-kl+activation.")
    out = {"output": 0.0, "bct": 0.0, "act": 0.0}
    for p in parts:
        out[COMPONENTS[p]] = float(weights.get(COMPONENTS[p], 1.0))
    return out


def validate(cfg: ExperimentConfig) -> None:
    if not cfg.arms:
        raise CoherentizeError("arms: name at least one arm.")
    for arm in cfg.arms:
        arm_weights(arm, cfg.component_weights)
    if not cfg.seeds:
        raise CoherentizeError("seeds: name at least one seed.")
    clash = set(cfg.variations.jailbreak_families) & set(cfg.eval.jailbreak_families)
    if clash and not cfg.eval.allow_overlap:
        raise CoherentizeError(
            f"eval.jailbreak_families: {sorted(clash)} also wrap the training data (variations.jailbreak_families); "
            "evaluate on held-out families, or set eval.allow_overlap: true if that is deliberate.")
    if cfg.variations.jailbreak_families and not cfg.eval.jailbreak_families and not cfg.eval.allow_overlap:
        raise CoherentizeError(
            "eval.jailbreak_families: training wraps harmful anchors in jailbreak families, so name the held-out "
            "families to evaluate (every family of the sources would include the training ones).")
    if cfg.variations.n_harmful and not cfg.variations.jailbreak_families:
        raise CoherentizeError("variations.jailbreak_families: n_harmful > 0 needs families to wrap the harmful anchors.")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Stages:
    """Stage folders, done markers and the log of one experiment."""

    def __init__(self, cfg: ExperimentConfig, log=print):
        self.cfg, self.log = cfg, log
        self.root = Path(cfg.out_dir)
        self.hashes: dict[str, str] = {}

    def key(self, name: str, config, *deps: str) -> str:
        h = _digest({"config": config, "deps": [self.hashes[d] for d in deps], "v": 1})
        self.hashes[name] = h
        return h

    def dir(self, name: str) -> Path:
        return self.root / "stages" / f"{name}-{self.hashes[name]}"

    def done(self, name: str) -> dict | None:
        marker = self.dir(name) / "done.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def finish(self, name: str, info: dict) -> dict:
        d = self.dir(name)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "done.json.tmp"
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, d / "done.json")
        return info


def _organism_model(cfg: ExperimentConfig, st: Stages) -> ModelConfig:
    from coherentize.recipes.organism import build_organism

    if not cfg.organism.enabled:
        return cfg.model
    info = st.done("organism")
    if info is None:
        st.log("== stage organism: refusal-tuned model organism")
        folder = build_organism(cfg.model, cfg.organism, log=st.log)
        info = st.finish("organism", {"folder": str(folder), **json.loads((folder / "organism.json").read_text())})
    else:
        st.log(f"== stage organism: done ({info['folder']})")
    return dataclasses.replace(cfg.model, name_or_path=info["folder"], gguf_file=None)


def _build_clusters(cfg: ExperimentConfig, model_cfg: ModelConfig, out: Path, log) -> dict:
    """train.jsonl and heldout.jsonl: anchors from the shipped sets varied by the families, plus harmful anchors
    wrapped in training jailbreak families when asked."""
    from coherentize.variations import families_by_name, load_prompt_set
    from coherentize.variations.families import vary

    v = cfg.variations
    if v.clusters_file:
        allc = load_clusters(v.clusters_file)
        train = [c for c in allc if c.split in (None, "train")]
        held = [c for c in allc if c.split == "test"]
    else:
        fams = families_by_name(v.families)
        train, held = [], []
        for split, dest in (("train", train), ("test", held)):
            for name in v.prompt_sets:
                items = load_prompt_set(name, split)
                items = items[: v.max_prompts] if v.max_prompts else items
                for it in items:
                    vars_ = vary(it.prompt, fams, v.seed, v.per_family)
                    if vars_:
                        dest.append(Cluster(f"{name}-{it.id}", it.prompt, vars_, [], {**it.tags, "split": split, "set": name}))
    counts = {"benign_train": len(train), "benign_heldout": len(held)}
    if v.n_harmful:
        from coherentize.chat import is_chat_model
        from coherentize import sources
        from coherentize.evaluate.jailbreak import pick_template, template_families, wrap
        from coherentize.evaluate.judges import is_refusal
        from coherentize.generation import generate
        from coherentize.models import load_model

        fams = template_families(cfg.eval.jailbreak_sources, v.jailbreak_families)
        harmful = sources.strongreject(split="train", n=v.n_harmful)
        model, tok = load_model(model_cfg)
        answers = generate(model, tok, [h["prompt"] for h in harmful], is_chat_model(tok, model_cfg.prompt_format),
                           cfg.response_max_new_tokens)
        kept = 0
        for h, ans in zip(harmful, answers):
            if v.keep_refused_only and not is_refusal(ans):
                continue
            vars_ = [Variation(wrap(pick_template(t, h["id"], f), h["prompt"]), f) for f, t in fams.items()]
            # The target is the model's own refusal to the clean request: no harmful text is ever a target.
            train.append(Cluster(f"harm-{h['id']}", h["prompt"], vars_, [ans] if is_refusal(ans) else [],
                                 {"split": "train", "harmful": True}))
            kept += 1
        counts.update(harmful_requested=len(harmful), harmful_kept=kept)
        del model
    if not train:
        raise CoherentizeError("variations: no training clusters were built; check prompt_sets and families.")
    write_clusters(out / "train.jsonl", train)
    if held:
        write_clusters(out / "heldout.jsonl", held)
    log(f"   clusters: {counts}")
    return counts


def _control_clusters(path: Path, out: Path) -> Path:
    """The control arm's data: every variation replaced by the anchor itself (so only SFT on anchors remains)."""
    cs = load_clusters(path)
    write_clusters(out, [Cluster(c.id, c.anchor, [Variation(c.anchor, "anchor_copy")] * len(c.variations),
                                 c.continuations, c.tags) for c in cs])
    return out


def _eval_model(model_cfg: ModelConfig, adapter: Path | None):
    from coherentize.models import load_model

    model, tok = load_model(model_cfg)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model, tok


def _evaluate(model_cfg, adapter, cfg: ExperimentConfig, train_clusters_path: Path, out: Path, reference: bool):
    from coherentize.evaluate import run_suite, write_results
    from coherentize.models import load_model

    model, tok = _eval_model(model_cfg, adapter)
    ref = load_model(model_cfg)[0] if reference else None
    train_clusters = load_clusters(train_clusters_path)
    results = run_suite(model, tok, cfg.eval, reference_model=ref, train_clusters=train_clusters,
                        model_name=str(model_cfg.name_or_path))
    write_results(results, out)
    return results


def run_experiment(cfg: ExperimentConfig, only: str | None = None, log=print) -> Path:
    """Run (or resume) every stage; returns the report path. only: run just that stage (its inputs must be done)."""
    validate(cfg)
    if only is not None and only not in STAGES:
        raise CoherentizeError(f"--stage {only!r}: choose one of {', '.join(STAGES)}.")
    st = Stages(cfg, log)
    st.root.mkdir(parents=True, exist_ok=True)
    (st.root / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str))
    t0 = time.time()

    def need(name: str):
        if only is not None and only != name and st.done(name) is None:
            raise CoherentizeError(f"--stage {only}: stage {name!r} has not run yet for this config "
                                   f"({st.dir(name)}); run `coherentize run` without --stage first.")

    def wanted(name: str) -> bool:
        return only is None or only == name

    # organism
    st.key("organism", {"model": to_dict(cfg.model), "organism": to_dict(cfg.organism)})
    if cfg.organism.enabled and st.done("organism") is None:
        need("organism")
    model_cfg = _organism_model(cfg, st)

    # variations
    st.key("variations", {"variations": to_dict(cfg.variations), "r": cfg.response_max_new_tokens,
                          "sources": cfg.eval.jailbreak_sources}, "organism")
    vdir = st.dir("variations")
    if st.done("variations") is None:
        need("variations")
        if wanted("variations"):
            log("== stage variations: training and held-out clusters")
            st.finish("variations", _build_clusters(cfg, model_cfg, vdir, log))
    train_path, held_path = vdir / "train.jsonl", vdir / "heldout.jsonl"

    # baseline eval
    st.key("baseline", {"eval": to_dict(cfg.eval)}, "organism", "variations")
    if st.done("baseline") is None:
        need("baseline")
        if wanted("baseline"):
            log("== stage baseline: evaluation before training")
            res = _evaluate(model_cfg, None, cfg, train_path, st.dir("baseline"), reference=False)
            st.finish("baseline", {"suites": list(res["suites"])})

    # train and eval per arm and seed
    runs = []
    for arm in cfg.arms:
        for seed in cfg.seeds:
            name = f"{arm}-seed{seed}"
            weights = arm_weights(arm, cfg.component_weights)
            targs = dataclasses.replace(cfg.train, seed=seed, data_seed=seed, output_weight=weights["output"],
                                        bct_weight=weights["bct"], act_weight=weights["act"])
            tkey = {"arm": arm, "seed": seed, "train": to_dict(targs), "lora": to_dict(cfg.lora),
                    "r": cfg.response_max_new_tokens}
            st.key(f"train/{name}", tkey, "organism", "variations")
            tdir = st.dir(f"train/{name}")
            if st.done(f"train/{name}") is None:
                need(f"train/{name}")
                if wanted("train"):
                    log(f"== stage train: {name}")
                    tdir.mkdir(parents=True, exist_ok=True)
                    data_file = _control_clusters(train_path, tdir / "control.jsonl") if arm == "control" else train_path
                    saves = max(1, (targs.max_steps or 1) // 4)
                    job = TrainJob(
                        model=model_cfg, lora=cfg.lora,
                        data=DataConfig(train_file=str(data_file), split=None,
                                        eval_file=str(held_path) if held_path.is_file() else None, eval_split=None,
                                        response_max_new_tokens=cfg.response_max_new_tokens),
                        train=dataclasses.replace(targs, output_dir=str(tdir), save_strategy="steps", save_steps=saves,
                                                  save_total_limit=1),
                    )
                    from coherentize.recipes.train_job import run_training

                    run_training(job, resume=True)
                    st.finish(f"train/{name}", {"arm": arm, "seed": seed})
            st.key(f"eval/{name}", {"eval": to_dict(cfg.eval)}, f"train/{name}")
            edir = st.dir(f"eval/{name}")
            if st.done(f"eval/{name}") is None:
                need(f"eval/{name}")
                if wanted("eval"):
                    log(f"== stage eval: {name}")
                    _evaluate(model_cfg, tdir / "model", cfg, train_path, edir, reference=True)
                    st.finish(f"eval/{name}", {"arm": arm, "seed": seed})
            runs.append({"arm": arm, "seed": seed, "train_dir": str(tdir), "eval_dir": str(edir)})

    # report
    report_path = st.root / "report.md"
    if wanted("report"):
        for r in runs:
            if not (Path(r["eval_dir"]) / "done.json").is_file():
                raise CoherentizeError(f"--stage report: evaluation of {r['arm']} seed {r['seed']} has not run yet.")
        from coherentize.report import write_report

        log("== stage report")
        organism_info = st.done("organism") if cfg.organism.enabled else None
        report_path = write_report(st.root, cfg, organism_info, st.dir("baseline"), runs,
                                   json.loads((vdir / "done.json").read_text()))
        log(f"report: {report_path} and {report_path.with_suffix('.html')} ({time.time() - t0:.0f} s)")
    return report_path
