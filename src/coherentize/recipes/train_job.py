"""A training job: config -> model + clusters -> anchor responses -> ConsistencyTrainer -> model + metrics.json.

    coherentize train --config configs/train.yaml [--set train.max_steps=50 ...] [--resume]

Writes into train.output_dir: responses.jsonl (the frozen model's answers to the anchors, reused on re-runs),
checkpoint-*/ (when save_strategy asks), model/ (the adapter, or the full model), merged/ (on request) and
metrics.json (loss components per step, held-out consistency before and after training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from coherentize.chat import is_chat_model, prompt_text
from coherentize.clusters import Cluster, load_clusters, select_split
from coherentize.collate import ConsistencyCollator, Example, build_examples
from coherentize.config import to_dict
from coherentize.errors import CoherentizeError
from coherentize.evaluate.heldout import measure_consistency
from coherentize.generation import generate
from coherentize.io import atomic_write, write_json
from coherentize.models import ModelConfig, load_model, resolve_device, resolved_precision
from coherentize.precision import describe, with_training_precision
from coherentize.recipes.models import layer_count
from coherentize.residual import resolve_layers
from coherentize.sources import data_path
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer


@dataclass
class DataConfig:
    """Which clusters to train on and measure, and where the shared responses come from."""

    train_file: str | None = None
    """Clusters JSONL to train on; None: the packaged demo set (data/clusters/demo.jsonl)."""
    split: str | None = "train"
    """Train on clusters whose tags.split equals this; null: every cluster in train_file."""
    eval_file: str | None = None
    """Held-out clusters measured before and after training; None: train_file."""
    eval_split: str | None = "test"
    """Measure clusters whose tags.split equals this; null with no eval_file: no held-out measurement."""
    response_source: str = "auto"
    """continuation (the clusters' own), generate (the frozen model's greedy answer to the anchor), or auto."""
    response_max_new_tokens: int = 48
    """Tokens generated per anchor response."""
    generation_batch_size: int = 16
    """Prompts per batch when generating responses."""
    heldout_examples_per_cluster: int = 0
    """Held-out examples measured per cluster before and after training (0: all; 1 halves the cost of the default
    experiment's measurement, one anchor with members_per_cluster-1 of its variations per cluster)."""
    responses_cache: str | None = None
    """JSONL cache of generated anchor responses, keyed by cluster id and anchor text (null: <output_dir>/responses.jsonl);
    jobs on the same model may share one (the experiment's arms and seeds do)."""
    on_small_cluster: str = "error"
    """A cluster without variations: error, or skip (counted and reported)."""


@dataclass
class LoraSettings:
    """LoRA adapters (peft). enabled: false trains every weight."""

    enabled: bool = True
    """Train LoRA adapters (true) or the full model (false)."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Adapter scaling numerator (the scale is alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to adapt; the default is attention-only; ["all-linear"] adapts every linear layer."""


@dataclass
class TrainJob:
    """`coherentize train`: model, data, adapters and the ConsistencyConfig training arguments."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Clusters and responses."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA or full fine-tuning."""
    train: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    """Objectives and every transformers TrainingArguments field."""
    save_merged: bool = False
    """Also write merged weights (adapters folded in) to output_dir/merged, loadable by plain transformers."""


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def anchor_responses(
    model, tokenizer, clusters: list[Cluster], chat: bool, data: DataConfig, cache: Path | None = None
) -> dict[str, str]:
    """The response shared by each cluster's members: its first continuation, or the model's greedy answer.

    Generated answers are cached in `cache` (JSONL, keyed by cluster id and anchor hash) so a re-run reuses them.
    """
    if data.response_source not in ("auto", "continuation", "generate"):
        raise CoherentizeError(f"data.response_source: {data.response_source!r} is not auto, continuation or generate.")
    out: dict[str, str] = {}
    need = []
    for c in clusters:
        if data.response_source != "generate" and c.continuations:
            out[c.id] = c.continuations[0]
        elif data.response_source == "continuation":
            raise CoherentizeError(f"cluster {c.id!r} has no continuations but data.response_source is 'continuation'.")
        else:
            need.append(c)
    cached = {}
    if cache is not None and cache.is_file():
        for line in cache.read_text().splitlines():
            rec = json.loads(line)
            cached[(rec["id"], rec["anchor_hash"])] = rec["response"]
    todo = [c for c in need if (c.id, _hash(prompt_text(c.anchor))) not in cached]
    if todo:
        texts = generate(
            model, tokenizer, [c.anchor for c in todo], chat,
            max_new_tokens=data.response_max_new_tokens, batch_size=data.generation_batch_size,
        )
        for c, t in zip(todo, texts):
            cached[(c.id, _hash(prompt_text(c.anchor)))] = t or "."
        if cache is not None:
            # jobs sharing the cache may write it at once: each whole file lands under a unique temporary name
            atomic_write(cache, "".join(json.dumps({"id": i, "anchor_hash": h, "response": r}) + "\n"
                                        for (i, h), r in cached.items()))
    for c in need:
        out[c.id] = cached[(c.id, _hash(prompt_text(c.anchor)))]
    return out


def apply_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise CoherentizeError(f"lora.target_modules: {e}") from None


def heldout_before(job: TrainJob, model, examples: list[Example], pad_token_id: int, layers: list[int]) -> dict:
    """measure_consistency of the untrained model. It depends only on the model, the examples and the layers and
    sites measured, not on the arm: with a shared responses cache (the experiment's arms and seeds share one), it is
    kept beside it, keyed by all of these, and every later job on the same model and examples reads it (9 of the 12
    jobs of configs/paraphrase_only.yaml, ~12 s each on 2 CPU cores)."""
    sites = list(job.train.act_sites)
    if not job.data.responses_cache:
        return measure_consistency(model, None, examples, pad_token_id, layers, sites)
    key = _hash(json.dumps({"model": to_dict(job.model), "layers": layers, "sites": sites,
                            "examples": [dataclasses.astuple(ex) for ex in examples]}))
    path = Path(job.data.responses_cache).parent / "heldout_before" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = measure_consistency(model, None, examples, pad_token_id, layers, sites)
    write_json(path, out, indent=None)
    return out


def check_layers(job: TrainJob, where: str = "train.act_layers") -> None:
    """train.act_layers against the model's layer count read from its config file (recipes.models.layer_count), so a
    layer out of range is one CoherentizeError before any weights load; unknown counts are checked after the load."""
    n_layers = layer_count(job.model)
    if n_layers is not None:
        resolve_layers(job.train.act_layers, n_layers, where)


def _load_data(job: TrainJob):
    path = job.data.train_file or str(data_path("clusters", "demo.jsonl"))
    clusters = load_clusters(path, on_too_small=job.data.on_small_cluster)
    train = select_split(clusters, job.data.split)
    if not train:
        raise CoherentizeError(f"data.split: no cluster in {path} has tags.split == {job.data.split!r}; "
                               "set data.split: null to train on every cluster.")
    held = []
    if job.data.eval_file or job.data.eval_split:
        eval_path = job.data.eval_file or path
        held = select_split(load_clusters(eval_path), job.data.eval_split)
        from coherentize.evaluate.overlap import check_heldout

        check_heldout(train, held)  # the one train/eval overlap check
    return train, held


def run_training(job: TrainJob, resume: bool = False) -> dict:
    args = job.train
    set_seed(args.seed)
    out_dir = Path(args.output_dir)
    train_clusters, held_clusters = _load_data(job)
    check_layers(job)  # a layer out of range fails here, before any weights load
    model, tok = load_model(job.model, for_training=True)
    # mixed precision: float32 master weights (loaded above) and autocast through the Trainer's bf16/fp16 flags
    device = resolve_device(job.model.device)
    precision = resolved_precision(job.model)
    args = with_training_precision(args, precision, device)
    chat = is_chat_model(tok, job.model.prompt_format)
    cache = Path(job.data.responses_cache) if job.data.responses_cache else out_dir / "responses.jsonl"
    responses = anchor_responses(model, tok, train_clusters + held_clusters, chat, job.data, cache)
    build = lambda cs: build_examples(  # noqa: E731
        cs, responses, tok, chat, args.members_per_cluster, args.max_prompt_length, args.max_response_length, args.seed
    )
    train_examples, held_examples = build(train_clusters), build(held_clusters)
    if job.data.heldout_examples_per_cluster > 0:
        seen: dict[str, int] = {}
        keep = []
        for ex in held_examples:
            seen[ex.cluster_id] = seen.get(ex.cluster_id, 0) + 1
            if seen[ex.cluster_id] <= job.data.heldout_examples_per_cluster:
                keep.append(ex)
        held_examples = keep
    layers = resolve_layers(args.act_layers, model.config.num_hidden_layers)

    metrics: dict = {"config": to_dict(job), "n_train_clusters": len(train_clusters),
                     "n_train_examples": len(train_examples), "n_heldout_clusters": len(held_clusters),
                     "precision": describe(model, precision, args)}
    if held_examples:
        metrics["heldout_before"] = heldout_before(job, model, held_examples, tok.pad_token_id, layers)

    if job.lora.enabled:
        model = apply_lora(model, job.lora)
        if args.gradient_checkpointing:
            model.enable_input_require_grads()
    # Full fine-tuning with a target or leash from theta0: load the original a second time rather than deep-copying
    # the trained model (under DeepSpeed ZeRO-3 the trained model is partitioned, and a copy of it is not a model).
    ref_model = load_model(job.model)[0] if not job.lora.enabled and args.needs_reference else None
    trainer = ConsistencyTrainer(
        model=model, args=args, train_dataset=train_examples, data_collator=ConsistencyCollator(tok.pad_token_id),
        processing_class=tok, ref_model=ref_model,
    )
    checkpoint = get_last_checkpoint(str(out_dir)) if resume and out_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics["train_log"] = trainer.state.log_history

    if held_examples:
        reference = lambda: trainer.original_model(trainer.model)  # noqa: E731
        metrics["heldout_after"] = measure_consistency(trainer.model, reference, held_examples, tok.pad_token_id, layers, args.act_sites)
        # the evaluation figures go to the report_to integrations too (TensorBoard, W&B), beside the losses
        trainer.log({f"{when}/{k}": v for when in ("heldout_before", "heldout_after")
                     for k, v in metrics[when]["mean"].items() if v is not None})
    trainer.save_model(str(out_dir / "model"))
    if job.save_merged:
        merged = trainer.model.merge_and_unload() if job.lora.enabled else trainer.model
        merged.save_pretrained(out_dir / "merged")
        tok.save_pretrained(out_dir / "merged")
    write_json(out_dir / "metrics.json", metrics)
    return metrics
