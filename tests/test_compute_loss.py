"""ConsistencyTrainer.compute_loss (the passes and one assembly, written out as TRL writes its trainers) computes the
same components as the functional consistency_components, with every component and the leash on a rotating share."""

import pytest
import torch

from coherentize.clusters import Cluster, Variation
from coherentize.collate import ConsistencyCollator, build_examples
from coherentize.recipes.train_job import LoraSettings, apply_lora
from coherentize.testing import tiny_model
from coherentize.trainer import ConsistencyConfig, ConsistencyTrainer, consistency_components, leash_rows

CLUSTERS = [Cluster(f"c{i}", f"What is {i} plus {i}?", [Variation(f"Q: what is {i} plus {i}? A:", "qa"),
                                                         Variation(f"Please answer: what is {i} plus {i}?", "wrapper")])
            for i in range(4)]
RESPONSES = {c.id: "The answer is " + "four " * (1 + int(c.id[1:]) % 3) for c in CLUSTERS}


def examples(tok):
    return build_examples(CLUSTERS, RESPONSES, tok, chat=True, members_per_cluster=3, seed=0)


def cfg(tmp_path, **kw):
    return ConsistencyConfig(output_dir=str(tmp_path / "out"), use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
                             per_device_train_batch_size=4, learning_rate=5e-3, max_steps=1, **kw)


@pytest.mark.parametrize("on_policy", [0.0, 0.5])
def test_compute_loss_equals_consistency_components(tiny_tok, tmp_path, on_policy):
    model = apply_lora(tiny_model(tiny_tok, seed=1), LoraSettings(r=2, alpha=4))
    c = cfg(tmp_path, output_weight=1.0, bct_weight=0.5, act_weight=0.3, act_layers=[1], leash_weight=0.2,
            leash_fraction=0.5, on_policy_weight=on_policy, on_policy_max_new_tokens=3)
    exs = examples(tiny_tok)
    trainer = ConsistencyTrainer(model=model, args=c, train_dataset=exs,
                                 data_collator=ConsistencyCollator(tiny_tok.pad_token_id), processing_class=tiny_tok)
    batch = ConsistencyCollator(tiny_tok.pad_token_id)(exs[:4])
    model.train()
    torch.manual_seed(0)
    loss, parts = trainer.compute_loss(model, batch, return_outputs=True)  # call 0 of step 0
    rows = leash_rows(batch["anchor_input_ids"].shape[0], c.leash_fraction, 0)
    torch.manual_seed(0)
    extra = {}
    if on_policy:
        from coherentize.generation import _eos_ids
        from coherentize.trainer import rollout_seed

        extra = dict(eos=_eos_ids(model, tiny_tok), seed=rollout_seed(c.seed, 0, 0), sampler=model, stop_early=True)
    reference = lambda: trainer.original_model(model)  # noqa: E731
    want = consistency_components(model, reference, batch, c, [1], trainer.weights, tiny_tok.pad_token_id, rows,
                                  **extra)
    assert set(parts) == set(want) and {"output", "bct", "act", "leash"} <= set(parts)
    assert ("on_policy" in parts) == bool(on_policy)
    for k in want:
        assert parts[k].item() == pytest.approx(want[k].item(), rel=1e-5, abs=1e-7), k
    assert loss.item() == pytest.approx(sum(w * want[k].item() for k, w in trainer.weights.items() if k in want),
                                        rel=1e-5)
