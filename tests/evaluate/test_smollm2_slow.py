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


def test_packed_prefill_changes_no_answer_of_the_real_model(monkeypatch):
    # jailbreak prompts: long shared template prefixes, requests of different lengths after them (the tails packed)
    from coherentize import generation
    from coherentize.chat import is_chat_model
    from coherentize.evaluate.jailbreak import MARGIN_OPENINGS, template_families, wrapped_prompts
    from coherentize.models import ModelConfig, load_model
    from coherentize.sources import strongreject

    model, tok = load_model(ModelConfig(name_or_path="smollm2-135m-instruct", device="cpu", precision="float32"))
    families = template_families(EvalConfig().jailbreak_sources, ["roleplay_actor", "fiction_story"])
    prompts, _ = wrapped_prompts(strongreject(split="test", n=8), families, None)
    packed = []
    real = generation._prefill_packed
    monkeypatch.setattr(generation, "_prefill_packed", lambda *a, **k: packed.append(len(a[3])) or real(*a, **k))
    runs = {}
    for pack in (False, True):
        monkeypatch.setattr(generation, "PACK", pack)
        runs[pack] = generation.generate_greedy(model, tok, prompts, is_chat_model(tok, "auto"), 8,
                                                openings=MARGIN_OPENINGS, progress=False)
    assert sum(packed) >= len(prompts) // 2  # most rows went through a packed pass
    assert runs[True].texts == runs[False].texts
    assert float((runs[True].openings - runs[False].openings).abs().max()) < 1e-3
