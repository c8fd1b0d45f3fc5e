"""Coherence metrics on held-out clusters: how much a model agrees with itself across variations of one prompt.

- output: mean pairwise JS divergence between members' next-token distributions over the cluster's shared
  continuation tokens, and mean KL(anchor || member) — both with ``losses.divergence`` (the training KL);
- decision agreement: the fraction of clusters whose members all take the same decision (refuse or not; the same
  multiple-choice letter; the same yes/no), plus the mean pairwise embedding cosine of free answers;
- activation: per layer, mean within-cluster and between-cluster cosine similarity of residual activations at the
  last prompt token, and separation = within - between (about 0 when clusters are indistinguishable; 1 at most) and
  the mean silhouette (cosine distance) — raw, and centred (the mean activation over all prompts removed first);
- self-report consistency: decision agreement on yes/no self-description questions asked in several framings.

Pure metric functions take tensors / label lists; ``*_for_clusters`` functions run the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
import torch.nn.functional as F

from coherentize.clusters import Cluster
from coherentize.losses import divergence


def cluster_divergences(logps: torch.Tensor) -> dict:
    """THE held-out output-consistency metric of one cluster, from (K, T, V) log-probabilities of its K members over
    the same T continuation tokens (member 0 is the anchor). Evaluation's coherence suite and training's
    before/after measurement (evaluate/heldout.measure_consistency) both use it.

    js_pairwise: JS averaged over the T positions, then over the K(K-1)/2 member pairs.
    js_to_anchor: JS(anchor, member) averaged over positions, then over the K-1 non-anchor members.
    kl_to_anchor: KL(anchor || member) averaged over positions, then over the K-1 non-anchor members.
    """
    k = logps.shape[0]
    if k < 2:
        raise ValueError("a cluster needs at least two members")
    pairs = {(i, j): divergence(logps[i], logps[j], "js").mean() for i, j in itertools.combinations(range(k), 2)}
    to_anchor = [divergence(logps[0], logps[j], "forward_kl").mean() for j in range(1, k)]
    return {"js_pairwise": float(torch.stack(list(pairs.values())).mean()),
            "js_to_anchor": float(torch.stack([pairs[(0, j)] for j in range(1, k)]).mean()),
            "kl_to_anchor": float(torch.stack(to_anchor).mean())}


def all_agree(labels: Sequence[Hashable]) -> float:
    """1.0 when every member of a cluster took the same decision, else 0.0."""
    return float(len(set(labels)) == 1)


def pairwise_agreement(labels: Sequence[Hashable]) -> float:
    """Fraction of member pairs that took the same decision."""
    pairs = list(itertools.combinations(labels, 2))
    return sum(a == b for a, b in pairs) / len(pairs)


def mean_pairwise_cosine(emb: torch.Tensor) -> float:
    """Mean cosine similarity over distinct pairs of (K, D) embeddings."""
    e = F.normalize(emb.float(), dim=-1)
    sim = e @ e.T
    k = e.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (k * (k - 1)))


def activation_separation(acts: torch.Tensor, cluster_ids: Sequence[Hashable]) -> dict:
    """Within- vs between-cluster cosine similarity of (N, H) activations of one layer.

    within: mean cosine over pairs of distinct points in the same cluster; between: over pairs in different clusters;
    separation = within - between; silhouette: mean over points of (b - a) / max(a, b) with cosine distance
    (a = mean distance to its own cluster, b = smallest mean distance to another cluster).
    """
    ids = list(cluster_ids)
    e = F.normalize(acts.float(), dim=-1)
    sim = e @ e.T  # (N, N)
    index = {c: k for k, c in enumerate(dict.fromkeys(ids))}
    labels = torch.tensor([index[c] for c in ids])
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool)
    within_mask, between_mask = same & ~eye, ~same
    if not within_mask.any() or not between_mask.any():
        raise ValueError("activation_separation needs at least two clusters, one with two members")
    within = float(sim[within_mask].mean())
    between = float(sim[between_mask].mean())
    dist = 1.0 - sim
    uniq = sorted(set(ids), key=ids.index)
    sil = []
    for i, c in enumerate(ids):
        own = [j for j, d in enumerate(ids) if d == c and j != i]
        if not own:
            continue
        a = float(dist[i, own].mean())
        b = min(float(dist[i, [j for j, d in enumerate(ids) if d == o]].mean()) for o in uniq if o != c)
        sil.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    per_cluster = {}  # separation of each cluster: its own within-mean minus its members' mean to other clusters
    for c in uniq:
        rows = labels == index[c]
        w = sim[rows][:, rows][~torch.eye(int(rows.sum()), dtype=torch.bool)]
        if w.numel():
            per_cluster[c] = float(w.mean()) - float(sim[rows][:, ~rows].mean())
    return {"within": within, "between": between, "separation": within - between,
            "silhouette": sum(sil) / len(sil), "per_cluster": per_cluster}


# ---------------------------------------------------------------------------------------------------------------
# Running the model


def shared_continuations(model, tokenizer, clusters: list[Cluster], chat: bool, batch_size: int = 16,
                         max_new_tokens: int = 16) -> dict[str, str]:
    """Per cluster id, the continuation its members are compared over: its first one, or, when it has none, the
    model's own greedy answer to the anchor (generated once, max_new_tokens)."""
    from coherentize.generation import generate

    missing = [c for c in clusters if not c.continuations]
    own = dict(zip([c.id for c in missing],
                   generate(model, tokenizer, [c.anchor for c in missing], chat, max_new_tokens, batch_size)))
    return {c.id: c.continuations[0] if c.continuations else own[c.id] for c in clusters}


def output_divergence_for_clusters(model, tokenizer, clusters: list[Cluster], chat: bool, batch_size: int = 16,
                                   max_new_tokens: int = 16) -> dict:
    """Per cluster id, {'js_pairwise', 'js_to_anchor', 'kl_to_anchor'} over its shared continuation
    (shared_continuations; a cluster whose continuation is empty is left out: no positions to compare)."""
    from coherentize.evaluate.scoring import continuation_logprobs

    conts = shared_continuations(model, tokenizer, clusters, chat, batch_size, max_new_tokens)
    out = {}
    for c in clusters:
        cont = conts[c.id]
        if not cont.strip():
            continue  # an empty answer gives no positions to compare
        members = c.members
        lps = continuation_logprobs(model, tokenizer, members, [cont] * len(members), chat, batch_size)
        out[c.id] = cluster_divergences(torch.stack(lps))
    return out


def separation_by_layer(hs: torch.Tensor, ids: Sequence[Hashable]) -> list[dict]:
    """Per layer of (N, L, H) activations (layer l + 1 = after block l + 1), activation_separation raw and centred,
    with each cluster's separation summarised over clusters (the CIs resample clusters)."""
    from coherentize.evaluate.stats import summarize

    out = []
    for layer in range(hs.shape[1]):
        sep = activation_separation(hs[:, layer], ids)
        per_cluster = sep.pop("per_cluster")
        # Centred: the mean over all prompts removed first. Under a chat template every prompt ends on the same
        # template token, which makes raw cosines all close to 1; centring shows what differs between prompts.
        cen = activation_separation(hs[:, layer] - hs[:, layer].mean(0, keepdim=True), ids)
        per_cluster_c = cen.pop("per_cluster")
        # the CIs resample clusters: each cluster's within-mean minus its mean similarity to other clusters
        out.append({"layer": layer + 1, **sep, "cluster_separation": summarize(list(per_cluster.values())),
                    **{f"{k}_centered": v for k, v in cen.items()},
                    "cluster_separation_centered": summarize(list(per_cluster_c.values()))})
    return out


def activation_separation_for_clusters(model, tokenizer, clusters: list[Cluster], chat: bool,
                                       batch_size: int = 16) -> list[dict]:
    """Per layer (embedding excluded), activation_separation of the last-prompt-token residuals of all members."""
    from coherentize.evaluate.scoring import last_token_hidden

    prompts = [m for c in clusters for m in c.members]
    hs = last_token_hidden(model, tokenizer, prompts, chat, batch_size)  # (N, L, H)
    return separation_by_layer(hs, [c.id for c in clusters for _ in c.members])


@dataclass
class MemberPasses:
    """What the coherence suite reads from one pass over its clusters' members (member_passes)."""

    outputs: list[str]
    """Each member's greedy answer, the clusters' members in order."""
    divergences: dict[str, dict]
    """Per cluster id, cluster_divergences over its shared continuation (clusters with an empty one left out)."""
    hidden: torch.Tensor | None
    """(N, L, H) last-prompt-token residual stream after every block, per member (None unless asked for)."""


def member_passes(model, tokenizer, clusters: list[Cluster], chat: bool, max_new_tokens: int, batch_size: int = 16,
                  decode_batch_size: int = 64, hidden: bool = True, progress=None) -> MemberPasses:
    """The members' answers, the output divergences and the activations from ONE prefill per member: the greedy
    generation's prefill also scores the cluster's shared continuation (generation.chain_logprobs) and keeps the
    last token's residual stream. The same figures as generate + output_divergence_for_clusters +
    activation_separation_for_clusters, which prefill every member three times (up to float rounding: the passes
    are batched differently). batch_size: rows per prefill chunk; decode_batch_size: rows decoded together."""
    from coherentize.generation import generate_greedy

    conts = shared_continuations(model, tokenizer, clusters, chat, batch_size)
    prompts = [m for c in clusters for m in c.members]
    row_conts = [conts[c.id] if conts[c.id].strip() else None for c in clusters for _ in c.members]
    gen = generate_greedy(model, tokenizer, prompts, chat, max_new_tokens, decode_batch_size, batch_size,
                          progress=progress, desc="coherence", row_continuations=row_conts, hidden=hidden)
    div, pos = {}, 0
    for c in clusters:
        lps = gen.continuation_logprobs[pos : pos + len(c.members)]
        if lps[0] is not None:
            div[c.id] = cluster_divergences(torch.stack(lps))
        pos += len(c.members)
    return MemberPasses(gen.texts, div, gen.hidden)


def plot_activation_separation(per_layer: list[dict], path) -> None:
    """Within/between cosine and separation per layer, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [d["layer"] for d in per_layer]
    fig, ax = plt.subplots(figsize=(8.5, 3.5))
    ax.plot(layers, [d["within"] for d in per_layer], marker="o", label="within-cluster cosine")
    ax.plot(layers, [d["between"] for d in per_layer], marker="o", label="between-cluster cosine")
    ax.plot(layers, [d["separation"] for d in per_layer], marker="s", label="separation (within - between)")
    if "separation_centered" in per_layer[0]:
        ax.plot(layers, [d["separation_centered"] for d in per_layer], marker="^", label="separation, centred")
    ax.set_xlabel("layer (after block)")
    ax.set_ylabel("cosine")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: curves span 0..1
    ax.set_title("Activation separation at the last prompt token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def yes_no(text: str) -> str:
    """'yes', 'no' or 'unclear': the first yes/no word of an answer (for self-report questions)."""
    import re

    m = re.search(r"\b(yes|no)\b", text.lower())
    return m.group(1) if m else "unclear"
