"""The one cluster builder (variations/build.py): `augment` and `run` build the same clusters; harmful anchors are
wrapped as evaluation wraps them; the pair filter keeps what each mode says."""

import pytest

from coherentize.clusters import load_clusters
from coherentize.config import apply_overrides, from_dict
from coherentize.errors import CoherentizeError
from coherentize.recipes.experiment import ExperimentConfig
from coherentize.recipes.experiment_data import build_training_clusters, harmful_clusters
from coherentize.variations import families_by_name, load_prompt_set
from coherentize.variations.build import build_clusters, filter_pairs, wrap_requests
from coherentize.variations.pipeline import augment
from coherentize.variations.templates import template_families


def _cfg(*sets):
    return from_dict(ExperimentConfig, apply_overrides({}, ["organism.enabled=false", "variations.prompt_sets=[benign]",
                                                            "variations.max_prompts=5", *sets]))


def test_run_and_augment_build_the_same_clusters(tmp_path):
    cfg = _cfg("variations.families=[synonym,wrapper,register]", "variations.seed=3")
    build_training_clusters(cfg.variations, cfg.response_max_new_tokens, None, tmp_path / "run", lambda *a: None)
    run = {c.id: c for c in load_clusters(tmp_path / "run" / "train.jsonl")}
    items = load_prompt_set("benign", "train")[:5]
    augment(items, tmp_path / "aug.jsonl", families_by_name(cfg.variations.families), seed=3, progress=False)
    aug = load_clusters(tmp_path / "aug.jsonl")
    assert len(aug) == len(run) == 5
    for c in aug:
        r = run[f"benign-{c.id}"]
        assert r.anchor == c.anchor and r.variations == c.variations
        assert r.tags == {**c.tags, "split": "train", "set": "benign"}


def test_run_uses_the_similarity_filter_of_the_builder(tmp_path):
    logs = []
    cfg = _cfg("variations.families=[formatting,typos,wrapper]", "variations.embedder=ngram",
               "variations.filter_families=[all]", "variations.filter.min_cosine=0.9")
    counts = build_training_clusters(cfg.variations, cfg.response_max_new_tokens, None, tmp_path, logs.append)
    kept = sum(len(c.variations) for c in load_clusters(tmp_path / "train.jsonl"))
    unfiltered = sum(len(c.variations) for c in build_clusters(load_prompt_set("benign", "train")[:5],
                                                                families_by_name(["formatting", "typos", "wrapper"])))
    assert counts["benign_train"] >= 1 and kept < unfiltered
    assert any("filter: cosine to anchor in [0.9" in m for m in logs)  # the builder's summary table


def test_harmful_anchors_are_wrapped_as_evaluation_wraps_them(tmp_path):
    """Training's harmful anchors and evaluation's wrapped requests are the same prompts, a family's system message
    included (TemplateFamily.wrap, the one wrapping)."""
    from coherentize.evaluate.jailbreak import wrapped_prompts

    f = tmp_path / "hosts.yaml"
    f.write_text("families:\n- name: talk_show\n  templates: ['Host: {prompt}', 'Guest: {prompt}']\n"
                 "  system: ['You are the host of a talk show.', 'You are a guest on a talk show.']\n")
    fams = template_families(["project", str(f)], only=["roleplay_actor", "hide_among_benign", "talk_show"])
    (c,) = wrap_requests([{"id": "r1", "prompt": "Do the thing."}], fams)
    assert c.id == "harm-r1" and c.anchor == "Do the thing." and c.tags == {"split": "train", "harmful": True}
    assert [v.family for v in c.variations] == ["roleplay_actor", "hide_among_benign", "talk_show"]
    prompts, keys = wrapped_prompts([{"id": "r1", "prompt": "Do the thing."}], fams)
    assert keys[1:] == [("r1", v.family) for v in c.variations] and prompts[1:] == [v.prompt for v in c.variations]
    assert c.variations[0].prompt == fams["roleplay_actor"].pick("r1").replace("{prompt}", "Do the thing.")
    assert "Do the thing." in c.variations[1].prompt and c.variations[1].prompt.count("\n") >= 3  # among 2-3 tasks
    system, user = c.variations[2].prompt  # the family's system message comes first, in evaluation too
    assert system["role"] == "system" and system["content"] in fams["talk_show"].system
    assert user == {"role": "user", "content": fams["talk_show"].pick("r1").replace("{prompt}", "Do the thing.")}


def test_pair_filter_modes():
    fams = template_families(["project"], only=["roleplay_actor", "opening_sure"])
    cs = wrap_requests([{"id": i, "prompt": f"Request {i}."} for i in "abc"], fams)
    clean = {"harm-a": True, "harm-b": True, "harm-c": False}
    wrapped = {("harm-a", "roleplay_actor"): False, ("harm-a", "opening_sure"): True,
               ("harm-b", "roleplay_actor"): True, ("harm-b", "opening_sure"): True,
               ("harm-c", "roleplay_actor"): False, ("harm-c", "opening_sure"): False}
    assert [c.id for c in filter_pairs(cs, clean, "none")] == ["harm-a", "harm-b", "harm-c"]
    assert [c.id for c in filter_pairs(cs, clean, "refused_clean")] == ["harm-a", "harm-b"]
    (only,) = filter_pairs(cs, clean, "refused_clean_complied_wrapped", wrapped)
    assert only.id == "harm-a" and [v.family for v in only.variations] == ["roleplay_actor"]
    with pytest.raises(CoherentizeError, match="variations.pair_filter"):
        filter_pairs(cs, clean, "sometimes")


def test_the_recipe_step_keeps_refused_clean_and_complied_wrapped_pairs(tiny_folder, monkeypatch):
    """The model refuses every clean request and answers only the opening_sure wrapper: only those pairs stay, and
    each keeps the model's own refusal as its target."""
    from coherentize import generation
    from coherentize.models import ModelConfig

    def fake_generate(model, tok, prompts, chat, max_new_tokens, *a, **k):
        return ["Sure, here you go." if "Begin your reply" in str(p) or "must start with" in str(p)
                else "I'm sorry, but I can't help with that." for p in prompts]

    monkeypatch.setattr(generation, "generate", fake_generate)
    cfg = _cfg("variations.n_harmful=4", "variations.jailbreak_families=[roleplay_actor,opening_sure]",
               "variations.pair_filter=refused_clean_complied_wrapped")
    train = []
    counts = harmful_clusters(cfg.variations, cfg.response_max_new_tokens,
                              ModelConfig(name_or_path=str(tiny_folder), device="cpu"), train)
    assert counts == {"harmful_requested": 4, "harmful_refused_clean": 4, "harmful_kept": 4, "harmful_pairs_kept": 4}
    assert all([v.family for v in c.variations] == ["opening_sure"] for c in train)
    assert all(c.continuations == ["I'm sorry, but I can't help with that."] for c in train)
    train.clear()
    cfg.variations.pair_filter = "refused_clean"
    harmful_clusters(cfg.variations, cfg.response_max_new_tokens,
                     ModelConfig(name_or_path=str(tiny_folder), device="cpu"), train)
    assert all(len(c.variations) == 2 for c in train)
