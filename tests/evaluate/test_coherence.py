import math

import pytest
import torch

from coherentize.clusters import Cluster, Variation
from coherentize.evaluate import coherence


def test_identical_members_have_zero_divergence():
    lp = torch.log_softmax(torch.randn(5, 7), -1)
    d = coherence.cluster_divergences(torch.stack([lp, lp, lp]))
    assert d["js_pairwise"] == pytest.approx(0.0, abs=1e-7)
    assert d["kl_to_anchor"] == pytest.approx(0.0, abs=1e-7)


def test_divergences_match_a_hand_computation_on_three_tokens():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    q = torch.tensor([[0.25, 0.25, 0.5]])
    d = coherence.cluster_divergences(torch.stack([p.log(), q.log()]))
    kl_pq = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # KL(anchor p || member q)
    m = [0.375, 0.25, 0.375]
    js = 0.5 * sum(a * math.log(a / b) for a, b in zip([0.5, 0.25, 0.25], m)) + 0.5 * sum(
        a * math.log(a / b) for a, b in zip([0.25, 0.25, 0.5], m)
    )
    assert d["kl_to_anchor"] == pytest.approx(kl_pq, rel=1e-5)
    assert d["js_pairwise"] == pytest.approx(js, rel=1e-5)


def test_kl_to_anchor_direction_is_anchor_first():
    p = torch.tensor([[0.9, 0.05, 0.05]])
    q = torch.tensor([[0.4, 0.3, 0.3]])
    d = coherence.cluster_divergences(torch.stack([p.log(), q.log()]))
    forward = float((p * (p.log() - q.log())).sum())
    backward = float((q * (q.log() - p.log())).sum())
    assert d["kl_to_anchor"] == pytest.approx(forward, rel=1e-5)
    assert abs(forward - backward) > 0.1


def test_agreement_known_answers():
    assert coherence.all_agree([True, True, True]) == 1.0
    assert coherence.all_agree(["A", "A", "B"]) == 0.0
    assert coherence.pairwise_agreement(["A", "A", "B"]) == pytest.approx(1 / 3)
    assert coherence.pairwise_agreement(["A", "A", "B", "B"]) == pytest.approx(2 / 6)


def test_activation_separation_of_orthogonal_clusters():
    e = torch.eye(4)
    acts = torch.stack([e[0], 2 * e[0], e[1], 3 * e[1]])  # two clusters, each on its own axis
    s = coherence.activation_separation(acts, ["a", "a", "b", "b"])
    assert s["within"] == pytest.approx(1.0) and s["between"] == pytest.approx(0.0)
    assert s["separation"] == pytest.approx(1.0) and s["silhouette"] == pytest.approx(1.0)
    assert s["per_cluster"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_activation_separation_of_mixed_up_clusters_is_negative():
    # each cluster holds one vector of each kind: members differ more within a cluster than across clusters
    acts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    s = coherence.activation_separation(acts, ["a", "a", "b", "b"])
    assert s["within"] == pytest.approx(0.0) and s["between"] == pytest.approx(0.5)
    assert s["separation"] == pytest.approx(-0.5)


def test_activation_separation_of_random_labels_is_near_zero():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(300, 16, generator=g) + 3.0
    s = coherence.activation_separation(acts, [i % 10 for i in range(300)])
    assert abs(s["separation"]) < 0.01
    assert -0.2 < s["silhouette"] < 0.0  # b is a minimum over other clusters, so random labels score below 0


def test_mean_pairwise_cosine():
    assert coherence.mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1 / 3)


def test_yes_no():
    assert coherence.yes_no("Yes, I do.") == "yes"
    assert coherence.yes_no("I think not. No.") == "no"
    assert coherence.yes_no("Maybe") == "unclear"


def test_model_divergence_is_zero_for_a_cluster_of_identical_prompts(tiny_lm, tiny_tok):
    same = Cluster("same", "What is the capital of France?", [Variation("What is the capital of France?", "copy")] * 2,
                   ["The capital is Paris."])
    diff = Cluster("diff", "What is the capital of France?", [Variation("Alice and Bob are talking.", "other")],
                   ["The capital is Paris."])
    out = coherence.output_divergence_for_clusters(tiny_lm, tiny_tok, [same, diff], chat=True)
    assert out["same"]["js_pairwise"] == pytest.approx(0.0, abs=1e-6)
    assert out["same"]["kl_to_anchor"] == pytest.approx(0.0, abs=1e-6)
    assert out["diff"]["js_pairwise"] > 1e-6


def test_activation_separation_for_clusters_per_layer(tiny_lm, tiny_tok):
    cl = [Cluster("a", "What is two plus two?", [Variation("What is two plus two?", "copy")]),
          Cluster("b", "Alice and Bob talk about the weather.", [Variation("Alice and Bob talk about the weather.", "c")])]
    per_layer = coherence.activation_separation_for_clusters(tiny_lm, tiny_tok, cl, chat=True)
    assert [d["layer"] for d in per_layer] == [1, 2]  # tiny model: 2 blocks, embedding excluded
    for d in per_layer:  # identical members: within-cluster cosine is exactly 1
        assert d["within"] == pytest.approx(1.0, abs=1e-5)
        assert d["cluster_separation"]["n"] == 2


def test_plot_activation_separation(tmp_path):
    per_layer = [{"layer": i, "within": 0.9, "between": 0.5, "separation": 0.4} for i in (1, 2, 3)]
    coherence.plot_activation_separation(per_layer, tmp_path / "sep.png")
    assert (tmp_path / "sep.png").stat().st_size > 1000


def test_centred_separation_sees_past_a_shared_offset(tiny_lm, tiny_tok, monkeypatch):
    # every activation = a big shared vector + a small cluster-specific one: raw cosines are all ~1, centred ones not
    import coherentize.evaluate.scoring as scoring

    shared = torch.zeros(8)
    shared[0] = 100.0
    e = torch.eye(8)
    acts = torch.stack([shared + e[1], shared + 1.1 * e[1], shared + e[2], shared + 0.9 * e[2]])[:, None, :]
    monkeypatch.setattr(scoring, "last_token_hidden", lambda *a, **k: acts)
    cl = [Cluster("a", "x", [Variation("y", "f")]), Cluster("b", "z", [Variation("w", "f")])]
    (layer,) = coherence.activation_separation_for_clusters(tiny_lm, tiny_tok, cl, chat=True)
    assert layer["separation"] < 0.01
    assert layer["separation_centered"] > 0.9


def _close(a, b, path="results"):
    """Every number in two results trees equal to float32 rounding, every other leaf equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), path
    else:
        assert a == b, path


def test_fused_member_passes_give_the_three_passes_figures(tiny_lm, tiny_tok, monkeypatch):
    # One prefill per member (answers, divergences over the shared continuation, activations) against the three
    # separate passes it replaces; clusters with and without continuations (own greedy answer), one with an empty
    # continuation (left out), members of different lengths, several prefill chunks and decode batches.
    from coherentize.evaluate import suite
    from coherentize.evaluate.suite import EvalConfig, default_clusters, run_suite

    clusters = default_clusters("test", 4) + [
        Cluster("given", "What is the capital of France?",
                [Variation("what is the capital of france", "lower"), Variation("Capital of France?", "short")],
                ["The capital of France is Paris."], {"harmful": False}),
        Cluster("empty", "Say nothing.", [Variation("say nothing", "lower")], [" "], {"harmful": False})]
    cfg = EvalConfig(suites=["coherence"], n_mc=2, n_self_report=1, max_new_tokens=5, n_boot=50, batch_size=3,
                     decode_batch_size=7, embed_model="none")
    prefill_tokens = []
    hook = tiny_lm.register_forward_hook(
        lambda m, args, kwargs, out: prefill_tokens.append(kwargs["input_ids"].numel())
        if kwargs["input_ids"].shape[1] > 1 else None, with_kwargs=True)
    runs = {}
    try:
        for fused in (False, True):
            monkeypatch.setattr(suite, "FUSED_COHERENCE", fused)
            prefill_tokens.clear()
            runs[fused] = run_suite(tiny_lm, tiny_tok, cfg, coherence_clusters=clusters, quiet=True)
            runs[fused, "tokens"] = sum(prefill_tokens)
    finally:
        hook.remove()
    old, new = runs[False], runs[True]
    assert set(new["per_item"]["coherence.js_pairwise"]) == {c.id for c in clusters} - {"empty"}
    assert len(new["suites"]["coherence"]["per_layer"]) == 2
    _close(old["suites"], new["suites"])
    _close(old["per_item"], new["per_item"])
    assert old["records"] == new["records"]
    members = sum(len(c.members) for c in clusters)
    assert runs[True, "tokens"] < runs[False, "tokens"] - 2 * members * 10  # two prefills of every member fewer
