"""The objectives, as pure functions on tensors. Training and evaluation both use these (one KL, written once).

Shapes: N = number of scored token positions (flattened over batch and time), V = vocabulary, H = hidden size.
Direction convention: ``kl(p, q)`` is KL(p || q) = sum_v p(v) (log p(v) - log q(v)), both arguments in log space.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "js"]
ActivationMetric = Literal["l2", "l2_normalized", "cosine"]
DIVERGENCES = ("forward_kl", "reverse_kl", "js")
ACTIVATION_METRICS = ("l2", "l2_normalized", "cosine")


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, V) logits -> (N, V) float32 log-probabilities at the given temperature."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row: (N, V), (N, V) -> (N,). Rows where p is 0 contribute 0 (xlogy convention)."""
    p = logp.exp()
    return (p * (logp - logq)).sum(-1)


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
    target_logits: torch.Tensor,
    kind: Divergence = "js",
    temperature: float = 1.0,
    chunk_size: int = 512,
) -> torch.Tensor:
    """Divergence between target (stop-gradient) and model next-token distributions, averaged over N positions.

    (N, V), (N, V) -> scalar. Computed over chunks of positions so that at most chunk_size x V float32
    log-probabilities exist at a time.
    """
    n = model_logits.shape[0]
    if n == 0:
        return model_logits.sum() * 0.0
    total = model_logits.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk_size):
        lt = log_probs(target_logits[s : s + chunk_size].detach(), temperature)
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


def leash(model_logits: torch.Tensor, ref_logits: torch.Tensor, kind: Divergence = "forward_kl") -> torch.Tensor:
    """KL leash to the frozen original: forward_kl = KL(p_original || p_model) averaged over positions."""
    return output_consistency(model_logits, ref_logits, kind=kind)
