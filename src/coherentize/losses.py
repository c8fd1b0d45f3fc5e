"""The objectives, as pure functions on tensors. Training and evaluation both use these (one KL, written once).

On-policy consistency (``on_policy_divergence``): the model samples y under a variant x'; the loss is the per-token
reverse KL(p_theta(.|x', y<t) || p_theta0(.|x, y<t)) to the frozen original on the clean prompt x, over the sampled
tokens, exactly over the vocabulary or as OPCT's importance-weighted sampled-token estimate.

Shapes: N = number of scored token positions (flattened over batch and time), V = vocabulary, H = hidden size.
Direction convention: ``kl(p, q)`` is KL(p || q) = sum_v p(v) (log p(v) - log q(v)), both arguments in log space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "js"]
ActivationMetric = Literal["l2", "l2_normalized", "cosine"]
OnPolicyEstimator = Literal["exact", "sampled"]
DIVERGENCES = ("forward_kl", "reverse_kl", "js")
ACTIVATION_METRICS = ("l2", "l2_normalized", "cosine")
ON_POLICY_ESTIMATORS = ("exact", "sampled")


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, V) logits -> (N, V) float32 log-probabilities at the given temperature."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row: (N, V), (N, V) -> (N,). Entries where p is 0 contribute 0 (xlogy convention), also when
    log p = -inf (a probability below float32's range): 0 * (-inf) would be NaN."""
    p = logp.exp()
    # Mask the log-ratio itself, not the product: torch.where after a NaN product would still back-propagate NaN.
    ratio = torch.where(p > 0, logp - logq, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return (p * ratio).sum(-1)


def js(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row (natural log, so bounded by log 2)."""
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - torch.log(torch.tensor(2.0, device=logp.device))
    return 0.5 * kl(logp, logm) + 0.5 * kl(logq, logm)


def divergence(logp_target: torch.Tensor, logp_model: torch.Tensor, kind: Divergence) -> torch.Tensor:
    """Per-row divergence between a target distribution and the model's, (N, V) x2 -> (N,).

    forward_kl = KL(target || model): mass-covering. reverse_kl = KL(model || target): mode-seeking. js: symmetric.
    """
    if kind == "forward_kl":
        return kl(logp_target, logp_model)
    if kind == "reverse_kl":
        return kl(logp_model, logp_target)
    if kind == "js":
        return js(logp_target, logp_model)
    raise ValueError(f"unknown divergence {kind!r}; use one of {DIVERGENCES}")


def centroid(logps: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Log of the mean distribution over dim: the cluster centroid target. (K, N, V) -> (N, V)."""
    return torch.logsumexp(logps, dim=dim) - torch.log(torch.tensor(float(logps.shape[dim]), device=logps.device))


def output_consistency(
    model_logits: torch.Tensor,
    target: torch.Tensor,
    kind: Divergence = "js",
    temperature: float = 1.0,
    chunk_size: int = 512,
    target_is_log_probs: bool = False,
) -> torch.Tensor:
    """Divergence between target (stop-gradient) and model next-token distributions, averaged over N positions.

    (N, V), (N, V) -> scalar. target: logits (scaled by the temperature here, like the model's), or log-probabilities
    already at that temperature when target_is_log_probs (the centroid). Computed over chunks of positions so that at
    most chunk_size x V float32 log-probabilities exist at a time.
    """
    n = model_logits.shape[0]
    if n == 0:
        return model_logits.sum() * 0.0
    total = model_logits.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk_size):
        t = target[s : s + chunk_size].detach()
        lt = t.float() if target_is_log_probs else log_probs(t, temperature)
        lm = log_probs(model_logits[s : s + chunk_size], temperature)
        total = total + divergence(lt, lm, kind).sum()
    return total / n


def token_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """BCT: mean negative log-likelihood of the anchor's own response tokens under a variant. (N, V), (N,) -> scalar."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target_ids)


def activation_distance(h: torch.Tensor, h_target: torch.Tensor, metric: ActivationMetric = "l2") -> torch.Tensor:
    """Per-token distance between residual-stream vectors, (N, H) x2 -> (N,).

    l2: squared L2 summed over the hidden dimension (Irpan et al.'s ACT).
    l2_normalized: squared L2 divided by the target's squared norm (scale-free across layers).
    cosine: 1 - cosine similarity.
    """
    h, h_target = h.float(), h_target.float()
    if metric == "l2":
        return (h - h_target).pow(2).sum(-1)
    if metric == "l2_normalized":
        return (h - h_target).pow(2).sum(-1) / h_target.pow(2).sum(-1).clamp_min(1e-6)
    if metric == "cosine":
        return 1.0 - F.cosine_similarity(h, h_target, dim=-1, eps=1e-6)
    raise ValueError(f"unknown activation metric {metric!r}; use one of {ACTIVATION_METRICS}")


def activation_consistency(
    hs: list[torch.Tensor], hs_target: list[torch.Tensor], metric: ActivationMetric = "l2"
) -> torch.Tensor:
    """ACT per layer: distance to the stop-gradient target averaged over tokens. Lists of (N, H) -> (n_layers,).

    The training loss is the mean over layers. With no token (N = 0) every layer contributes 0.
    """
    per_layer = []
    for h, t in zip(hs, hs_target):
        if h.shape[0] == 0:
            per_layer.append(h.sum() * 0.0)
        else:
            per_layer.append(activation_distance(h, t.detach(), metric).mean())
    return torch.stack(per_layer)


def leash(model_logits: torch.Tensor, ref_logits: torch.Tensor, kind: Divergence = "forward_kl",
          temperature: float = 1.0, chunk_size: int = 512) -> torch.Tensor:
    """KL leash to the frozen original, (N, V) x2 -> scalar: forward_kl = KL(p_original || p_model) averaged over the
    N positions (reverse_kl = KL(p_model || p_original), js), both distributions at the temperature."""
    return output_consistency(model_logits, ref_logits, kind, temperature, chunk_size)


def on_policy_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    estimator: OnPolicyEstimator = "exact",
    sample_logp: torch.Tensor | None = None,
    chunk_size: int = 512,
) -> torch.Tensor:
    """On-policy consistency over N sampled tokens, (N, V), (N, V), (N,) [, (N,)] -> scalar (mean over the N).

    student_logits: p = p_theta(.|x', y<t), the model being trained on the variant prompt (carries the gradient).
    teacher_logits: q = p_theta0(.|x, y<t), the frozen original on the clean prompt (stop-gradient here).
    tokens: y_t, the sampled tokens. sample_logp: log mu(y_t), the log-probability the sampler gave y_t (the model at
        the sampling temperature, at sampling time; no gradient), needed by "sampled".
    Both p and q are the models' own distributions (temperature 1); the direction is reverse: KL(p || q).

    exact:   mean_t sum_v p(v) (log p(v) - log q(v)), the full-vocabulary reverse KL at each sampled position (the
             GKD form: no score-function variance).
    sampled: mean_t w_t * sg(r_t), with r_t = log p(y_t) - log q(y_t) and w_t = exp(log p(y_t) - sg(log mu(y_t))), the
             importance weight of the current policy against the sampling one (1 in value when sampling at
             temperature 1 with the same weights). Its value is an unbiased estimate of the exact form at that position
             (E_{y~mu}[w r] = sum_v p(v) r(v)); its gradient is w_t r_t grad log p(y_t), whose expectation under mu is
             sum_v p(v) r(v) grad log p(v) = grad KL(p || q) (the other term, sum_v p grad log p = grad 1, is 0): an
             unbiased estimate of the exact form's gradient (OPCT / on-policy distillation's importance-sampled
             policy gradient with the per-token reward -r_t). Unclipped.
    In both, the prefix y<t is held fixed: how theta changes which prefixes get sampled is not differentiated (the
    per-token objective of OPCT and on-policy distillation).
    """
    if estimator not in ON_POLICY_ESTIMATORS:
        raise ValueError(f"unknown on-policy estimator {estimator!r}; use one of {ON_POLICY_ESTIMATORS}")
    n = student_logits.shape[0]
    if n == 0:
        return student_logits.sum() * 0.0
    if estimator == "sampled" and sample_logp is None:
        raise ValueError("the sampled estimator needs sample_logp, the sampler's log-probability of each token")
    total = student_logits.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk_size):
        lp = log_probs(student_logits[s : s + chunk_size])
        lq = log_probs(teacher_logits[s : s + chunk_size].detach())
        if estimator == "exact":
            total = total + kl(lp, lq).sum()
        else:
            y = tokens[s : s + chunk_size].unsqueeze(1)
            lp_y, lq_y = lp.gather(1, y).squeeze(1), lq.gather(1, y).squeeze(1)
            w = torch.exp(lp_y - sample_logp[s : s + chunk_size].detach().float())
            total = total + (w * (lp_y - lq_y).detach()).sum()
    return total / n


@dataclass
class Rollouts:
    """Continuations sampled from the model for R rows, right-aligned in (R, L) like the response columns of a Tail
    (column j holds the token at position -L+j). A rollout ends at its first EOS (kept: stopping is a choice the
    policy makes) or at the token limit; the columns left of it are padding and never scored."""

    tokens: torch.Tensor  # (R, L) long: row r's sampled tokens in its last lengths[r] columns, 0 elsewhere
    lengths: torch.Tensor  # (R,) long, >= 1
    sample_logp: torch.Tensor  # (R, L) float32: log mu(y_t), the sampler's log-probability of each token; 0 elsewhere
    variant: torch.Tensor  # (R,) long: the variant row each rollout continues


@dataclass
class OnPolicyPass:
    """The passes of the on-policy component over R rollouts (each row: prompt + its sampled tokens, left-padded)."""

    student_logits: torch.Tensor  # (R, L, vocab) the current model on variant prompt + y (with grad)
    teacher_logits: torch.Tensor  # (R, L, vocab) theta0 on the clean (anchor) prompt + y, stop-gradient
    rollouts: Rollouts


def on_policy_component(p: OnPolicyPass, estimator: OnPolicyEstimator = "exact", chunk_size: int = 512) -> torch.Tensor:
    """on_policy_divergence over the sampled tokens of every rollout (padding columns excluded)."""
    r_idx, j_idx = tail_mask(p.rollouts.lengths, p.student_logits.shape[1]).nonzero(as_tuple=True)
    return on_policy_divergence(p.student_logits[r_idx, j_idx], p.teacher_logits[r_idx, j_idx],
                                p.rollouts.tokens[r_idx, j_idx], estimator, p.rollouts.sample_logp[r_idx, j_idx],
                                chunk_size)


# ---------------------------------------------------------------------------------------------------------------
# One batch's components from the outputs of its forward passes (what training calls and the tests check)

TOKEN_SITES = ("last_prompt", "prompt_suffix", "response")
OUTPUT_TARGETS = ("anchor", "centroid")


@dataclass
class Tail:
    """The end of one forward pass over a left-padded batch of R rows (collate.py: position -1 is every row's last
    token, and the members of an example line up over their response and their shared prompt suffix)."""

    logits: torch.Tensor  # (R, L, V): logits[:, j] predicts the token at position -L+j
    hidden: dict = field(default_factory=dict)  # layer -> (R, W, H): residual stream at the last W positions
    # (zeros left of a batch shorter than W: no site ever falls there, since a site lies inside its own row)


@dataclass(frozen=True)
class LossOptions:
    """Plain options of the assembly (ConsistencyConfig holds the documented fields they come from)."""

    weights: dict  # output, bct, act, leash, on_policy -> weight; a component is computed only when its weight is > 0
    output_divergence: Divergence = "js"
    output_target: str = "anchor"  # anchor | centroid
    temperature: float = 1.0
    act_sites: tuple = ("prompt_suffix",)
    act_metric: ActivationMetric = "l2_normalized"
    leash_divergence: Divergence = "forward_kl"
    chunk_size: int = 512
    on_policy_estimator: OnPolicyEstimator = "exact"


def tail_mask(lengths: torch.Tensor, width: int, start_offset: torch.Tensor | None = None) -> torch.Tensor:
    """(R, width) bool: True for the `lengths` positions just before `start_offset` from the end (0 = the end)."""
    j = torch.arange(width, device=lengths.device).unsqueeze(0)
    end = width - (start_offset.unsqueeze(1) if start_offset is not None else 0)
    return (j >= end - lengths.unsqueeze(1)) & (j < end)


def act_site_mask(sites, response_len: torch.Tensor, suffix_len: torch.Tensor, width: int) -> torch.Tensor:
    """(V, width) bool: the ACT token sites of each variant row in a window of its last `width` positions.

    response: the row's response tokens; last_prompt: the token before them; prompt_suffix: the prompt tokens the
    variant shares with its anchor at their end (the last prompt token is the last of them).
    """
    mask = torch.zeros((response_len.shape[0], width), dtype=torch.bool, device=response_len.device)
    if "response" in sites:
        mask |= tail_mask(response_len, width)
    if "last_prompt" in sites:
        mask |= tail_mask(torch.ones_like(response_len), width, response_len)
    if "prompt_suffix" in sites:
        mask |= tail_mask(suffix_len, width, response_len)
    return mask


def act_window(sites, response_len: torch.Tensor, suffix_len: torch.Tensor) -> int:
    """W: the positions from the end that the ACT sites of a batch reach (the hidden-state window to keep)."""
    L = int(response_len.max())
    if "prompt_suffix" in sites:
        return L + max(int(suffix_len.max()), 1)
    return L + 1 if "last_prompt" in sites else L


def member_centroid(anchor_logp: torch.Tensor, variant_logp: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """The centroid target of each example: log of the mean distribution over its members (the anchor and its
    variants), (B, L, V) + (V', L, V) with owner (V',) -> (B, L, V), through ``centroid`` (logsumexp: no underflow)."""
    out = torch.empty_like(anchor_logp)
    for b in range(anchor_logp.shape[0]):
        out[b] = centroid(torch.cat([anchor_logp[b : b + 1], variant_logp[owner == b]]))
    return out


def assemble_components(
    var: Tail | None,
    target: Tail | None,
    batch: dict,
    opts: LossOptions,
    target_variant_logits: torch.Tensor | None = None,
    leash_logits: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    leash_rows: torch.Tensor | None = None,
    on_policy: OnPolicyPass | None = None,
) -> dict[str, torch.Tensor]:
    """The loss components of one batch from its pass outputs; only those with a weight > 0 are computed.

    var: the model being trained on the V variant rows (carries the gradient); None when no output, bct or act.
    target: the B anchor rows under the target model (theta0, or the current model), stop-gradient (None with var).
    target_variant_logits: (V, L, vocab) the variants under the target model, for output_target == "centroid".
    leash_logits / ref_logits: (R, L, vocab) the current model / theta0 on the anchor rows `leash_rows` (R,)
        (None: all B rows), for the leash.
    on_policy: the on-policy passes over the rollouts sampled under the variants, for on_policy.
    batch: the collator's variant_anchor (V,), anchor_response_len (B,), variant_response_len (V,),
        variant_suffix_len (V,), response_ids (B, L).
    Returns output, bct, act and act/layer<l> (detached), leash, on_policy.
    """
    w = opts.weights
    out: dict[str, torch.Tensor] = {}
    if w.get("on_policy", 0) > 0 and on_policy is not None:
        out["on_policy"] = on_policy_component(on_policy, opts.on_policy_estimator, opts.chunk_size)
    if var is not None:
        out.update(_variant_components(var, target, batch, opts, target_variant_logits))
    if w.get("leash", 0) > 0 and leash_logits is not None and leash_logits.shape[0] > 0:
        resp_a = batch["anchor_response_len"]
        if leash_rows is not None:
            resp_a = resp_a[leash_rows]
        a_idx, aj = tail_mask(resp_a, leash_logits.shape[1]).nonzero(as_tuple=True)
        out["leash"] = leash(leash_logits[a_idx, aj], ref_logits[a_idx, aj], opts.leash_divergence, opts.temperature,
                             opts.chunk_size)
    return out


def _variant_components(var: Tail, target: Tail, batch: dict, opts: LossOptions,
                        target_variant_logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """output, bct, act (and act/layer<l>) from the variant rows and their anchors' targets."""
    w = opts.weights
    owner, resp_v = batch["variant_anchor"], batch["variant_response_len"]
    L = var.logits.shape[1]
    out: dict[str, torch.Tensor] = {}
    v_idx, j_idx = tail_mask(resp_v, L).nonzero(as_tuple=True)  # (N,) response positions of the variant rows
    var_logits = var.logits[v_idx, j_idx]  # (N, vocab)
    if w.get("output", 0) > 0:
        if opts.output_target == "centroid":
            if target_variant_logits is None:
                raise ValueError("output_target='centroid' needs the variants under the target model")
            cen = member_centroid(log_probs(target.logits.detach(), opts.temperature),
                                  log_probs(target_variant_logits.detach(), opts.temperature), owner)
            out["output"] = output_consistency(var_logits, cen[owner[v_idx], j_idx], opts.output_divergence,
                                               opts.temperature, opts.chunk_size, target_is_log_probs=True)
        else:
            out["output"] = output_consistency(var_logits, target.logits[owner[v_idx], j_idx], opts.output_divergence,
                                               opts.temperature, opts.chunk_size)
    if w.get("bct", 0) > 0:
        out["bct"] = token_cross_entropy(var_logits, batch["response_ids"][owner[v_idx], j_idx])
    if w.get("act", 0) > 0 and var.hidden:
        layers = list(var.hidden)
        width = var.hidden[layers[0]].shape[1]
        sv, sj = act_site_mask(opts.act_sites, resp_v, batch["variant_suffix_len"], width).nonzero(as_tuple=True)
        per_layer = activation_consistency([var.hidden[l][sv, sj] for l in layers],
                                           [target.hidden[l][owner[sv], sj] for l in layers], opts.act_metric)
        out["act"] = per_layer.mean()
        out.update({f"act/layer{l}": v.detach() for l, v in zip(layers, per_layer)})
    return out
