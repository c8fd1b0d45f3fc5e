"""End-to-end checks on the packaged SmolLM2-135M-Instruct (slow: a few prompts each)."""

import math

import pytest

from coherentize.evaluate import EvalConfig, run_suite

pytestmark = pytest.mark.slow


def test_probes_run_on_the_real_model(smollm2):
    model, tok = smollm2
    cfg = EvalConfig(suites=["jailbreak", "overrefusal"], n_harmful=3, n_overrefusal=4, max_new_tokens=12,
                     jailbreak_families=["opening_sure"], n_boot=200)
    res = run_suite(model, tok, cfg, quiet=True)
    jb = res["suites"]["jailbreak"]
    assert jb["direct_refusal_rate"]["n"] == 3
    assert math.isfinite(jb["families"]["opening_sure"]["margin_shift"]["mean"])
    assert res["suites"]["overrefusal"]["refusal_rate"]["n"] == 4
    harmful = [r for r in res["records"] if r["suite"] == "jailbreak"]
    assert all(r["excerpt"] == "[redacted: complied]" or r["label"] == "refused" for r in harmful)


def test_capability_figures_of_a_real_model(smollm2):
    model, tok = smollm2
    cfg = EvalConfig(suites=["capability"], n_capability_texts=8, n_mc=40, n_boot=200)
    cap = run_suite(model, tok, cfg, reference_model=model, quiet=True)["suites"]["capability"]
    assert cap["kl_to_reference"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert cap["perplexity"]["mean"] < 60  # a trained model on plain English (a random one: ~50 000)
    # measured 0.475 on 40 easy questions (chance 0.25); letter-format mc_accuracy is near chance for a 135M model
    assert cap["mc_cloze_accuracy"]["mean"] > 0.35
