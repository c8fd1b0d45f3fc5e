"""The learning-rate selection's score and validation prompts (recipes/selection.py)."""

import pytest

from coherentize.recipes.experiment import VariationsConfig
from coherentize.recipes.selection import SelectConfig, score, validation_prompts


def test_score_is_the_harmonic_mean_of_harmful_refusal_and_benign_answers():
    s = score([True, True, True, False], [False, True])  # a = 0.75, b = 0.5
    assert (s["harmful_refusal"], s["benign_answer"]) == (0.75, 0.5)
    assert s["harmonic_mean"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert score([True] * 3, [True] * 2)["harmonic_mean"] == 0.0  # refusing everything scores 0, not 0.5
    assert score([False] * 3, [False] * 2)["harmonic_mean"] == 0.0  # answering everything too
    assert (s["n_harmful_prompts"], s["n_benign"]) == (4, 2)


def test_validation_prompts_wrap_validation_requests_in_the_training_families_only():
    from coherentize import sources

    v = VariationsConfig(jailbreak_families=["roleplay_actor", "AIM"], template_sources=["project", "easyjailbreak"])
    p = validation_prompts(SelectConfig(n_harmful=3, n_benign=4), v)
    reqs = [r["prompt"] for r in sources.strongreject(split="validation", n=3)]
    test_reqs = {r["prompt"] for r in sources.strongreject(split="test")}
    assert len(p["harmful"]) == 3 * (1 + 2) and p["harmful"][:3] == reqs  # clean, then each in both families
    assert all(any(r in h for r in reqs) for h in p["harmful"]) and not test_reqs & set(reqs)
    assert len(p["benign"]) == 4
    clean_only = validation_prompts(SelectConfig(n_harmful=3, n_benign=4), VariationsConfig())
    assert clean_only["harmful"] == reqs
