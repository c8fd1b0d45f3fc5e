"""Each loss against a brute-force computation on small hand-made distributions, direction included."""

import math

import pytest
import torch

from coherentize import losses


def brute_kl(p, q):
    """KL(p || q) for plain probability lists."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


P = [0.7, 0.2, 0.1]
Q = [0.05, 0.15, 0.8]


def logt(p):
    return torch.tensor([p]).log()


def test_kl_direction_on_three_token_vocabulary():
    got = losses.kl(logt(P), logt(Q)).item()
    assert got == pytest.approx(brute_kl(P, Q), rel=1e-5)
    # KL is asymmetric: the two directions differ on this pair, so a swapped argument order would be caught.
    assert abs(brute_kl(P, Q) - brute_kl(Q, P)) > 0.1


def test_forward_and_reverse_kl_follow_the_documented_direction():
    target, model = logt(P), logt(Q)
    assert losses.divergence(target, model, "forward_kl").item() == pytest.approx(brute_kl(P, Q), rel=1e-5)
    assert losses.divergence(target, model, "reverse_kl").item() == pytest.approx(brute_kl(Q, P), rel=1e-5)


def test_js_matches_definition_and_is_symmetric_and_bounded():
    m = [(a + b) / 2 for a, b in zip(P, Q)]
    expect = 0.5 * brute_kl(P, m) + 0.5 * brute_kl(Q, m)
    assert losses.divergence(logt(P), logt(Q), "js").item() == pytest.approx(expect, rel=1e-5)
    assert losses.js(logt(Q), logt(P)).item() == pytest.approx(expect, rel=1e-5)
    one_hot_a, one_hot_b = torch.tensor([[0.0, -1e9]]), torch.tensor([[-1e9, 0.0]])
    assert losses.js(one_hot_a, one_hot_b).item() == pytest.approx(math.log(2), rel=1e-4)


def test_divergences_are_zero_for_identical_distributions_and_unknown_kind_fails():
    lp = torch.log_softmax(torch.randn(5, 11), -1)
    for kind in losses.DIVERGENCES:
        assert losses.divergence(lp, lp, kind).abs().max().item() < 1e-6
    with pytest.raises(ValueError):
        losses.divergence(lp, lp, "kl")


def test_output_consistency_is_mean_over_positions_chunked_and_stops_target_gradient():
    torch.manual_seed(0)
    model_logits = torch.randn(7, 5, requires_grad=True)
    target_logits = torch.randn(7, 5, requires_grad=True)
    temperature = 2.0
    got = losses.output_consistency(model_logits, target_logits, "forward_kl", temperature, chunk_size=3)
    p_t = torch.softmax(target_logits / temperature, -1).tolist()
    p_m = torch.softmax(model_logits / temperature, -1).tolist()
    expect = sum(brute_kl(a, b) for a, b in zip(p_t, p_m)) / 7
    assert got.item() == pytest.approx(expect, rel=1e-5)
    got.backward()
    assert target_logits.grad is None and model_logits.grad.abs().sum() > 0


def test_centroid_is_log_of_mean_probability():
    lps = torch.stack([logt(P), logt(Q)])
    expect = [(a + b) / 2 for a, b in zip(P, Q)]
    assert losses.centroid(lps).exp()[0].tolist() == pytest.approx(expect, rel=1e-5)


def test_token_cross_entropy_is_mean_negative_log_likelihood():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    ids = torch.tensor([0, 2])
    p = torch.softmax(logits, -1)
    expect = -(math.log(p[0, 0]) + math.log(p[1, 2])) / 2
    assert losses.token_cross_entropy(logits, ids).item() == pytest.approx(expect, rel=1e-5)


def test_activation_distances_against_hand_computation():
    h = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, -3.0, 0.0]])
    assert losses.activation_distance(h, t, "l2").tolist() == pytest.approx([8.0, 36.0])
    assert losses.activation_distance(h, t, "l2_normalized").tolist() == pytest.approx([8.0, 36.0 / 9.0])
    assert losses.activation_distance(h, t, "cosine").tolist() == pytest.approx([1 - 1 / 3, 2.0])


def test_activation_consistency_per_layer_and_stops_target_gradient():
    h1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    t1 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    h2 = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    t2 = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    per_layer = losses.activation_consistency([h1, h2], [t1, t2], "l2")
    assert per_layer.tolist() == pytest.approx([1.0, 2.0])
    per_layer.sum().backward()
    assert t1.grad is None and h1.grad is not None
    empty = losses.activation_consistency([torch.zeros(0, 2)], [torch.zeros(0, 2)], "l2")
    assert empty.tolist() == [0.0]


def test_leash_is_kl_from_reference_to_model():
    ref, model = logt(P), logt(Q)
    assert losses.leash(model, ref).item() == pytest.approx(brute_kl(P, Q), rel=1e-5)


def test_kl_is_finite_where_probabilities_underflow():
    """Defect 3: log p = -inf (below float32's range) must contribute 0 (xlogy), not 0 * (-inf) = NaN, and its
    gradient must stay finite."""
    logp = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    logq = torch.log(torch.tensor([[0.5, 0.25, 0.25]])).requires_grad_(True)
    got = losses.kl(logp, logq)
    assert got.item() == pytest.approx(math.log(2), rel=1e-6)
    got.sum().backward()
    assert torch.isfinite(logq.grad).all()
    lp = torch.log_softmax(torch.tensor([[0.0, -200.0, -400.0]]) / 0.5, -1)  # exp underflows to 0 in float32
    assert torch.isfinite(losses.divergence(lp, lp, "forward_kl")).all()


def test_centroid_does_not_underflow():
    lps = torch.tensor([[[0.0, -1e4]], [[-1e4, 0.0]]])  # two members, each sure of a different token
    got = losses.centroid(lps)
    assert torch.isfinite(got).all() and got.exp()[0].tolist() == pytest.approx([0.5, 0.5])


def test_leash_uses_the_temperature():
    ref, model = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p, q = torch.softmax(ref / 2.0, -1).tolist()[0], torch.softmax(model / 2.0, -1).tolist()[0]
    assert losses.leash(model, ref, "forward_kl", temperature=2.0).item() == pytest.approx(brute_kl(p, q), rel=1e-5)
