import numpy as np
import pytest

from coherentize.evaluate import stats


def test_constant_sample_has_a_zero_width_interval():
    s = stats.summarize([0.25] * 30)
    assert s == {"mean": 0.25, "n": 30, "ci_low": 0.25, "ci_high": 0.25}


def test_bootstrap_ci_of_a_proportion_matches_the_normal_approximation():
    values = [1.0] * 200 + [0.0] * 200  # p = 0.5, n = 400: 1.96 * sqrt(.25 / 400) = 0.049
    lo, hi = stats.bootstrap_ci(values, n_boot=4000)
    assert lo == pytest.approx(0.451, abs=0.01)
    assert hi == pytest.approx(0.549, abs=0.01)


def test_ci_is_seeded_and_drops_missing_values():
    a = stats.summarize([1, 0, 1, None, float("nan"), 1])
    assert a["n"] == 4 and a["mean"] == 0.75
    assert a == stats.summarize([1, 0, 1, 1])


def test_empty_sample_reports_n_zero():
    assert stats.summarize([]) == {"mean": None, "n": 0, "ci_low": None, "ci_high": None}


def test_paired_difference_of_a_constant_shift_is_exact():
    before = np.random.default_rng(0).normal(size=50)
    d = stats.paired_difference(before, before + 0.3)
    assert d["mean"] == pytest.approx(0.3)
    assert d["ci_low"] == pytest.approx(0.3) and d["ci_high"] == pytest.approx(0.3)
    assert d["paired"] and d["n"] == 50


def test_paired_ci_is_narrower_than_unpaired_when_prompts_vary():
    rng = np.random.default_rng(1)
    before = rng.normal(scale=5.0, size=80)
    after = before + 0.5 + rng.normal(scale=0.1, size=80)
    paired = stats.paired_difference(before, after)
    unpaired = stats.unpaired_difference(before, after)
    assert paired["ci_low"] > 0.4 and paired["ci_high"] < 0.6
    assert unpaired["ci_high"] - unpaired["ci_low"] > 5 * (paired["ci_high"] - paired["ci_low"])


def test_paired_difference_needs_aligned_arrays():
    with pytest.raises(ValueError):
        stats.paired_difference([1, 2], [1])


def test_compare_pairs_on_shared_item_ids():
    before = {"per_item": {"x.rate": {"a": 0.0, "b": 1.0, "c": 0.0}}}
    after = {"per_item": {"x.rate": {"a": 1.0, "b": 1.0, "d": 0.0}}}
    d = stats.compare(before, after)["x.rate"]
    assert d["paired"] and d["n"] == 2 and d["mean"] == 0.5


# ---- rates: Wilson and Newcombe intervals keep a width at 0% and 100%


def test_a_rate_at_zero_or_one_hundred_percent_has_a_wilson_interval_with_width():
    z2 = 1.959963984540054 ** 2
    zero, full = stats.summarize([0.0] * 20), stats.summarize([1.0] * 20)
    assert zero["mean"] == 0.0 and zero["ci_low"] == 0.0 and zero["ci_high"] == pytest.approx(z2 / (20 + z2))
    assert full["mean"] == 1.0 and full["ci_high"] == 1.0 and full["ci_low"] == pytest.approx(20 / (20 + z2))
    assert zero["ci_high"] == pytest.approx(0.1611, abs=1e-4)  # 0/20 -> [0%, 16.1%]


def test_wilson_interval_of_a_middle_rate_matches_the_textbook_formula():
    s = stats.summarize([1.0] * 3 + [0.0] * 7)  # 3/10: Wilson [0.1078, 0.6032]
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert stats.summarize([1.0] * 3 + [0.0] * 7, rate=False)["ci_low"] != s["ci_low"]  # bootstrap when told


def test_paired_rate_difference_keeps_a_width_when_nothing_changed():
    for values in ([0.0] * 20, [1.0] * 20, [0.0] * 10 + [1.0] * 10):
        d = stats.paired_difference(values, values)
        assert d["mean"] == 0.0 and d["ci_low"] < -0.05 and d["ci_high"] > 0.05, values


def test_newcombe_paired_interval_by_hand():
    # 3 pairs, all 0 -> 1: margins 0/3 and 3/3 with Wilson [0, u] and [1 - u, 1], u = z^2 / (3 + z^2); phi = 0.
    z2 = 1.959963984540054 ** 2
    u = z2 / (3 + z2)
    d = stats.paired_difference([0, 0, 0], [1, 1, 1])
    assert d["mean"] == 1.0 and d["ci_high"] == 1.0
    assert d["ci_low"] == pytest.approx(1 - (u ** 2 + u ** 2) ** 0.5)
    # Symmetric: swapping before and after mirrors the interval.
    rng = np.random.default_rng(3)
    b, a = rng.integers(0, 2, 30).astype(float), rng.integers(0, 2, 30).astype(float)
    fwd, back = stats.paired_difference(b, a), stats.paired_difference(a, b)
    assert (fwd["ci_low"], fwd["ci_high"]) == pytest.approx((-back["ci_high"], -back["ci_low"]))


# ---- seeds: a two-level bootstrap (seeds crossed with items); items are never counted twice


def _interval(s):
    return s["mean"], s["ci_low"], s["ci_high"]


def test_three_copies_of_one_seed_give_exactly_the_ci_of_one_seed():
    # The seed level adds nothing when every seed agrees: the same item draws, and offsets from the first seed of
    # exactly 0, so the interval is equal to the last bit (not within a Monte-Carlo tolerance).
    rng = np.random.default_rng(4)
    ids = [f"p{i}" for i in range(40)]
    base = dict(zip(ids, rng.normal(size=40)))
    arm = {i: v + 0.1 + rng.normal(scale=0.5) for i, v in base.items()}
    one, three = stats.summarize_seeds([arm]), stats.summarize_seeds([arm] * 3)
    assert (three["ci_low"], three["ci_high"]) == (one["ci_low"], one["ci_high"])
    assert three["mean"] == pytest.approx(one["mean"], abs=1e-15)
    assert three["n"] == one["n"] == 40 and three["seeds"] == 3 and three["deff"] == 1.0
    assert three["per_seed"] == [one["mean"]] * 3
    p1, p3 = stats.paired_seeds([(base, arm)]), stats.paired_seeds([(base, arm)] * 3)
    assert (p3["ci_low"], p3["ci_high"]) == (p1["ci_low"], p1["ci_high"])
    assert p3["n"] == 40 and p3["seeds"] == 3
    # ... and for rates (Wilson and Newcombe with n / deff, deff exactly 1).
    rate = {i: float(v > 0) for i, v in arm.items()}
    r1, r3 = stats.summarize_seeds([rate]), stats.summarize_seeds([rate] * 3)
    assert _interval(r3) == _interval(r1) and r3["method"] == "wilson"
    rb = {i: float(v > 0.5) for i, v in base.items()}
    d1, d3 = stats.paired_seeds([(rb, rate)]), stats.paired_seeds([(rb, rate)] * 3)
    assert _interval(d3) == _interval(d1) and d3["method"] == "newcombe"


def test_seeds_shifted_by_a_constant_widen_the_interval_beyond_the_item_only_bootstrap():
    rng = np.random.default_rng(6)
    x = rng.normal(size=40)
    runs = [{f"p{i}": v + shift for i, v in enumerate(x)} for shift in (-0.6, 0.0, 0.7)]
    s = stats.summarize_seeds(runs)
    # The item-only bootstrap (items resampled with all their seeds, seeds fixed) sees no shift: the shifts cancel in
    # each item's average over seeds, so it gives the interval of the mean seed alone.
    alone = stats.summarize_seeds([{f"p{i}": v + 0.1 / 3 for i, v in enumerate(x)}])
    assert s["ci_low"] < alone["ci_low"] - 0.1 and s["ci_high"] > alone["ci_high"] + 0.1
    assert s["ci_items"] == pytest.approx([alone["ci_low"], alone["ci_high"]])
    assert s["deff"] > 2 and s["per_seed"] == pytest.approx([x.mean() - 0.6, x.mean(), x.mean() + 0.7])
    # Paired within a seed: an arm whose effect vs control changes sign between seeds gets a wide interval.
    ctrl = [{f"p{i}": v for i, v in enumerate(x)}] * 3
    d = stats.paired_seeds([(c, {i: v + e for i, v in c.items()}) for c, e in zip(ctrl, (-0.049, -0.036, 0.056))])
    assert d["per_seed"] == pytest.approx([-0.049, -0.036, 0.056])
    assert d["ci_low"] < -0.04 and d["ci_high"] > 0.05  # the item-only interval is a point: every item moved alike
    assert d["ci_items"] == pytest.approx([d["mean"], d["mean"]])


def test_seeds_that_disagree_on_a_rate_widen_wilson_by_the_design_effect():
    rng = np.random.default_rng(7)
    p = rng.random(60)
    runs = [{f"p{i}": float(v < q) for i, v in enumerate(p)} for q in (0.2, 0.5, 0.8)]  # 20%, 50%, 80% seeds
    s = stats.summarize_seeds(runs)
    pooled_only = stats.wilson_ci(s["mean"], s["n"])
    assert s["method"] == "wilson" and s["deff"] > 2
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(stats.wilson_ci(s["mean"], s["n"] / s["deff"]))
    assert s["ci_high"] - s["ci_low"] > 1.4 * (pooled_only[1] - pooled_only[0])
    # Seeds that are all 0 or all 1 (no item varies within its seeds' average): n_eff = 1.
    split = stats.summarize_seeds([{f"p{i}": 0.0 for i in range(20)}, {f"p{i}": 1.0 for i in range(20)}])
    assert split["deff"] == 20 and (split["ci_low"], split["ci_high"]) == pytest.approx(stats.wilson_ci(0.5, 1))


def test_one_seed_equals_the_plain_summary_and_single_arrays():
    values = np.random.default_rng(5).normal(size=25)
    s = stats.summarize_seeds([dict(enumerate(values))])
    assert {k: s[k] for k in ("mean", "n", "ci_low", "ci_high")} == stats.summarize(values)
    lo, hi = stats.bootstrap_ci(values)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))


def test_items_missing_in_a_seed_are_dropped_from_that_seed_only():
    a = {"x": 1.0, "y": 0.5, "z": None}
    b = {"x": 0.0, "y": 0.25}
    s = stats.summarize_seeds([a, b])
    assert s["n"] == 2 and s["mean"] == pytest.approx(1.75 / 4) and s["seeds"] == 2
    empty = stats.summarize_seeds([{}, {}])
    assert {k: empty[k] for k in ("mean", "n", "seeds")} == {"mean": None, "n": 0, "seeds": 0}
    d = stats.paired_seeds([({"x": 1.0, "y": 2.0}, {"x": 1.5}), ({"y": 2.0}, {"y": 3.0, "w": 9.0})])
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.75) and d["seeds"] == 2


def test_harmonic_mean_by_hand_and_a_zero_rate_scores_zero():
    assert stats.harmonic_mean([0.5, 1.0]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert stats.harmonic_mean([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
    assert stats.harmonic_mean([0.0, 1.0, 1.0]) == 0.0
    with pytest.raises(ValueError):
        stats.harmonic_mean([])
