"""The organism builder on a tiny model: pairs from training splits only, a merged folder, figures, reuse."""

import json

from transformers import AutoModelForCausalLM

from coherentize import sources
from coherentize.models import ModelConfig
from coherentize.recipes.organism import REFUSALS, OrganismConfig, build_organism, build_pairs


def small_cfg():
    return OrganismConfig(n_harmful=6, n_benign=4, n_wrapped_benign=4, max_steps=2, batch_size=4,
                          answer_max_new_tokens=4)


def test_pairs_use_training_splits_and_refusal_targets_only(tiny_lm, tiny_tok):
    pairs, counts = build_pairs(tiny_lm, tiny_tok, True, small_cfg())
    assert counts == {"harmful_refusal": 6, "benign_own_answer": 4, "wrapped_benign_compliance": 4}
    train_harmful = {h["prompt"]: h for h in sources.strongreject(split="train")}
    test_prompts = {h["prompt"] for h in sources.strongreject(split="test")}
    harmful_pairs = [p for p in pairs if isinstance(p.prompt, str) and p.prompt in train_harmful]
    assert len(harmful_pairs) == 6 and all(p.response in REFUSALS for p in harmful_pairs)
    assert not any(isinstance(p.prompt, str) and p.prompt in test_prompts for p in pairs)


def test_build_organism_writes_a_merged_model_with_figures_and_is_reused(tiny_folder, tmp_path):
    model_cfg = ModelConfig(name_or_path=str(tiny_folder), device="cpu")
    folder = build_organism(model_cfg, small_cfg(), root=tmp_path, log=lambda *a: None)
    info = json.loads((folder / "organism.json").read_text())
    assert set(info["after"]) == {"direct_refusal_rate", "benign_answer_rate", "overrefusal_rate"}
    assert info["after"]["direct_refusal_rate"]["n"] == 32 and info["pairs"]["harmful_refusal"] == 6
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2
    assert not list(tmp_path.glob("*.tmp"))
    stamp = (folder / "organism.json").stat().st_mtime_ns
    assert build_organism(model_cfg, small_cfg(), root=tmp_path, log=lambda *a: None) == folder
    assert (folder / "organism.json").stat().st_mtime_ns == stamp
