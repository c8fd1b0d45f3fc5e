"""Held-out consistency of a model during training: training's before/after metric, measured per example with the
training passes themselves (trainer.run_passes and losses.assemble_components), so the metric and the loss read the
same tokens and layers; its output divergences are the evaluation's coherence metric (evaluate.coherence)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coherentize.collate import ConsistencyCollator, Example
from coherentize.evaluate.coherence import cluster_divergences
from coherentize.losses import Tail, assemble_components, log_probs
from coherentize.trainer import loss_options, run_passes


@dataclass(frozen=True)
class MeasureOptions:
    """How the passes run when measuring (the fields of ConsistencyConfig that run_passes and loss_options read):
    targets from the current model, squared L2 between residual streams at `act_sites`, the leash as
    KL(p_original || p_model) on the anchor's response, JS between output distributions, no temperature."""

    act_sites: tuple[str, ...] = ("prompt_suffix",)
    target_model: str = "current"
    act_metric: str = "l2"
    leash_divergence: str = "forward_kl"
    output_divergence: str = "js"
    output_target: str = "anchor"
    temperature: float = 1.0
    divergence_chunk_size: int = 512
    on_policy_estimator: str = "exact"


@torch.no_grad()
def measure_consistency(model, reference, examples: list[Example], pad_token_id: int, layers: list[int],
                        sites: list[str], batch_size: int = 8) -> dict:
    """Held-out consistency of the current model per example (values for CIs), from the training passes
    (trainer.run_passes) on chunks of batch_size examples, each example read from its own rows:

    output_js, js_pairwise, kl_to_anchor: evaluate.coherence.cluster_divergences (the evaluation's coherence metric)
        over the members' next-token distributions on the shared response (output_js = its js_to_anchor);
    act_l2/layer<l>: squared L2 between the residual streams of each variant and its anchor at the given token sites;
    kl_to_original: KL(p_original || p_model) on the anchor's response (None without a reference).
    """
    opts = MeasureOptions(act_sites=tuple(sites))
    collate = ConsistencyCollator(pad_token_id)
    weights = {"output": 0.0, "act": 1.0, "leash": 1.0 if reference is not None else 0.0}
    per = {"output_js": [], "js_pairwise": [], "kl_to_anchor": [], "kl_to_original": [],
           **{f"act_l2/layer{l}": [] for l in layers}}
    was_training = model.training
    model.eval()
    for s in range(0, len(examples), batch_size):
        # One set of passes per chunk of examples; each example's values come from its own rows of the tails (the
        # left-padded layout keeps every row's response and prompt suffix at the same offsets from the end).
        chunk = examples[s : s + batch_size]
        batch = {k: v.to(model.device) for k, v in collate(chunk).items()}
        p = run_passes(model, reference, batch, opts, layers, weights, pad_token_id)
        owner = batch["variant_anchor"]
        for b, ex in enumerate(chunk):
            rows = (owner == b).nonzero(as_tuple=True)[0]
            one = {"variant_anchor": torch.zeros_like(rows),
                   "anchor_response_len": batch["anchor_response_len"][b : b + 1],
                   "variant_response_len": batch["variant_response_len"][rows],
                   "variant_suffix_len": batch["variant_suffix_len"][rows],
                   "response_ids": batch["response_ids"][b : b + 1]}
            var = Tail(p.var.logits[rows], {l: h[rows] for l, h in p.var.hidden.items()})
            target = Tail(p.target.logits[b : b + 1], {l: h[b : b + 1] for l, h in p.target.hidden.items()})
            leash = ((p.leash_logits[b : b + 1], p.ref_logits[b : b + 1]) if p.leash_logits is not None
                     else (None, None))
            parts = assemble_components(var=var, target=target, batch=one, opts=loss_options(opts, weights),
                                        leash_logits=leash[0], ref_logits=leash[1])
            n = len(ex.response_ids)  # every row's response fills the last n logit columns
            div = cluster_divergences(log_probs(torch.cat([target.logits, var.logits])[:, -n:]))
            per["output_js"].append(div["js_to_anchor"])
            per["js_pairwise"].append(div["js_pairwise"])
            per["kl_to_anchor"].append(div["kl_to_anchor"])
            for l in layers:
                per[f"act_l2/layer{l}"].append(parts[f"act/layer{l}"].item())
            if "leash" in parts:
                per["kl_to_original"].append(parts["leash"].item())
    model.train(was_training)
    summary = {k: (sum(v) / len(v) if v else None) for k, v in per.items()}
    summary["n_examples"] = len(examples)
    return {"mean": summary, "per_example": per}
