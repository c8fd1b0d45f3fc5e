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
