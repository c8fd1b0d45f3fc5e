"""The performance paths of consistency_components compute the same thing as the plain ones."""

import contextlib
import random

import pytest
import torch

from coherentize import trainer as T
from coherentize.collate import ConsistencyCollator, Example

WEIGHTS = {"output": 1.0, "bct": 0.5, "act": 1.0, "leash": 0.1}


@pytest.fixture
def lora_lm(tiny_tok):
    from coherentize.recipes.train_job import LoraSettings, apply_lora
    from coherentize.testing import tiny_model

    model = apply_lora(tiny_model(tiny_tok), LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    for name, w in model.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so theta differs from theta0
            torch.nn.init.normal_(w, std=0.1)
    return model


def _batch(pad_id, variant_len):
    rng = random.Random(0)
    rand = lambda k: [rng.randrange(10, 300) for _ in range(k)]  # noqa: E731
    examples = []
    for i in range(3):
        tail = rand(4)
        anchor = [5] + rand(rng.randrange(2, 5)) + tail
        examples.append(Example(str(i), anchor, [[9] + rand(rng.randrange(*variant_len)) + tail for _ in range(3)],
                                rand(rng.randrange(3, 7))))
    return ConsistencyCollator(pad_id)(examples)


@pytest.mark.parametrize("target_model", ["original", "current"])
def test_split_training_pass_matches_joint(lora_lm, tiny_tok, monkeypatch, target_model):
    batch = _batch(tiny_tok.pad_token_id, (20, 40))  # variants much longer than anchors
    cfg = T.ConsistencyConfig(output_dir="/tmp/unused", output_weight=1.0, bct_weight=0.5, act_weight=1.0,
                              leash_weight=0.1, target_model=target_model,
                              act_sites=["prompt_suffix", "response", "last_prompt"])

    @contextlib.contextmanager
    def reference():
        with lora_lm.disable_adapter():
            yield lora_lm

    results = []
    for limit in (1.0, 0.0):  # one joint pass, then two passes
        monkeypatch.setattr(T, "ROW_SPLIT_LIMIT", limit)
        lora_lm.zero_grad()
        parts = T.consistency_components(lora_lm, reference, batch, cfg, [1], WEIGHTS, tiny_tok.pad_token_id)
        sum(WEIGHTS[k] * parts[k] for k in WEIGHTS).backward()
        grads = [w.grad.clone() for w in lora_lm.parameters() if w.requires_grad]
        results.append(({k: v.item() for k, v in parts.items()}, grads))
    (joint, g_joint), (split, g_split) = results
    assert joint["leash"] > 0 and joint["output"] > 0
    assert split == pytest.approx(joint, rel=1e-5, abs=1e-7)
    for a, b in zip(g_joint, g_split):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_forward_tail_contiguous_head_is_exact_and_leaves_no_hook(lora_lm):
    ids = torch.randint(10, 300, (3, 20))
    mask, pos = torch.ones_like(ids), torch.arange(20).expand(3, 20)
    tail = T.forward_tail(lora_lm, ids, mask, pos, 5, [1], 8)
    plain = lora_lm(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=6, use_cache=False)
    torch.testing.assert_close(tail.logits, plain.logits[:, :-1])
    assert tail.logits.shape == (3, 5, plain.logits.shape[-1]) and tail.hidden[1].shape[:2] == (3, 8)
    assert not lora_lm.get_output_embeddings()._forward_pre_hooks


def test_leash_rows_rotate_and_cover_the_fraction():
    picks = [T.leash_rows(4, 0.5, c).tolist() for c in range(4)]
    assert picks == [[0, 1], [2, 3], [0, 1], [2, 3]]
    one_row = [T.leash_rows(1, 0.5, c).tolist() for c in range(4)]
    assert one_row == [[], [0], [], [0]]  # a batch of one anchor: every other batch
    counts = [0] * 3
    for c in range(30):
        for r in T.leash_rows(3, 0.5, c).tolist():
            counts[r] += 1
    assert counts == [15, 15, 15]
    assert T.leash_rows(3, 1.0, 7).tolist() == [0, 1, 2]


def test_leash_on_a_subset_trains_only_those_anchor_rows(lora_lm, tiny_tok):
    """With rows given, only those anchors carry the leash; the other components are unchanged, and with no row the
    step has no leash at all."""
    batch = _batch(tiny_tok.pad_token_id, (3, 6))
    cfg = T.ConsistencyConfig(output_dir="/tmp/unused", act_weight=1.0, leash_weight=0.1, target_model="original")

    @contextlib.contextmanager
    def reference():
        with lora_lm.disable_adapter():
            yield lora_lm

    full = T.consistency_components(lora_lm, reference, batch, cfg, [1], WEIGHTS, tiny_tok.pad_token_id)
    sub = T.consistency_components(lora_lm, reference, batch, cfg, [1], WEIGHTS, tiny_tok.pad_token_id,
                                   torch.tensor([1]))
    for k in ("output", "bct", "act"):
        assert sub[k].item() == pytest.approx(full[k].item(), rel=1e-5)
    assert sub["leash"].item() != pytest.approx(full["leash"].item(), rel=1e-3)
    none = T.consistency_components(lora_lm, reference, batch, cfg, [1], WEIGHTS, tiny_tok.pad_token_id,
                                    torch.tensor([], dtype=torch.long))
    assert "leash" not in none and none["act"].item() == pytest.approx(full["act"].item(), rel=1e-5)


def _counting_reference(model, seen: list):
    """theta0 (adapters disabled) that records the rows of every forward pass run through it."""

    @contextlib.contextmanager
    def reference():
        with model.disable_adapter():
            hook = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
            try:
                yield model
            finally:
                hook.remove()

    return reference


@pytest.mark.parametrize("weights, target_model, rows, expected", [
    ({"bct": 1.0}, "original", None, []),  # BCT alone: no target, no theta0 pass
    ({"bct": 1.0, "leash": 0.1}, "original", [1], [1]),  # the leash's theta0 pass covers its own row only
    ({"bct": 1.0, "leash": 0.1}, "original", [], []),  # no leash row in this batch: nothing of theta0
    ({"output": 1.0, "leash": 0.1}, "original", [1], [3]),  # the targets need theta0 over every anchor
    ({"act": 1.0, "leash": 0.1}, "current", None, [3]),  # targets from the current model, the leash on every anchor
])
def test_theta0_runs_only_over_the_rows_whose_outputs_are_used(lora_lm, tiny_tok, weights, target_model, rows,
                                                               expected):
    """The frozen original runs only where its outputs are used (targets of output/ACT, the leash's own rows), and
    the components are those the full theta0 pass gives."""
    batch = _batch(tiny_tok.pad_token_id, (20, 40))
    cfg = T.ConsistencyConfig(output_dir="/tmp/unused", target_model=target_model,
                              **{f"{k}_weight": v for k, v in {"output": 0.0, **weights}.items()})
    rows = torch.tensor(rows, dtype=torch.long) if rows is not None else None
    seen = []
    parts = T.consistency_components(lora_lm, _counting_reference(lora_lm, seen), batch, cfg, [1], weights,
                                     tiny_tok.pad_token_id, rows)
    assert seen == expected
    # the same components with theta0 run over every anchor (output at a tiny weight asks for its targets)
    full = T.consistency_components(lora_lm, _counting_reference(lora_lm, []), batch, cfg, [1],
                                    {**weights, "output": weights.get("output", 1e-9)}, tiny_tok.pad_token_id, rows)
    assert set(parts) <= set(full)
    for k, v in parts.items():
        assert v.item() == pytest.approx(full[k].item(), rel=1e-5, abs=1e-7), k


def test_row_split_cuts_where_it_saves_tokens():
    assert T.row_split([5, 5, 5, 40]) == 3  # 3 x 5 + 1 x 40 tokens instead of 4 x 40
    assert T.row_split([4, 30, 40]) == 1
    assert T.row_split([30, 31, 32, 33]) == 0  # under ROW_SPLIT_LIMIT of saving: one pass
    assert T.row_split([40]) == 0 and T.row_split([]) == 0


@pytest.mark.parametrize("weights", [{"bct": 1.0}, WEIGHTS])
def test_short_and_long_variant_rows_run_as_two_passes_with_the_same_result(lora_lm, tiny_tok, monkeypatch, weights):
    """Wrapped variants beside short ones: the training pass runs the short rows and the long rows apart (less
    padding), and the components and gradients are those of one pass over all rows."""
    rng = random.Random(1)
    rand = lambda k: [rng.randrange(10, 300) for _ in range(k)]  # noqa: E731
    examples = []
    for i in range(3):
        tail = rand(3)
        examples.append(Example(str(i), rand(3) + tail, [rand(2) + tail, rand(3) + tail, rand(45) + tail],
                                rand(rng.randrange(3, 6))))
    batch = ConsistencyCollator(tiny_tok.pad_token_id)(examples)
    cfg = T.ConsistencyConfig(output_dir="/tmp/unused", act_sites=["prompt_suffix", "response"],
                              **{f"{k}_weight": weights.get(k, 0.0) for k in ("output", "bct", "act", "leash")})
    results = []
    for limit in (T.ROW_SPLIT_LIMIT, 1.0):  # the default, then never split
        monkeypatch.setattr(T, "ROW_SPLIT_LIMIT", limit)
        trained = []
        hook = lora_lm.register_forward_pre_hook(
            lambda _m, _a, kw: trained.append(kw["input_ids"].shape) if torch.is_grad_enabled() else None,
            with_kwargs=True)
        lora_lm.zero_grad()
        parts = T.consistency_components(lora_lm, _counting_reference(lora_lm, []), batch, cfg, [1], weights,
                                         tiny_tok.pad_token_id, torch.tensor([1]))
        hook.remove()
        sum(weights[k] * parts[k] for k in weights).backward()
        grads = [w.grad.clone() for w in lora_lm.parameters() if w.requires_grad]
        results.append((trained, {k: v.item() for k, v in parts.items()}, grads))
    (split_passes, split, g_split), (one_pass, joint, g_joint) = results
    leash = int(weights.get("leash", 0) > 0)  # the short anchor row carrying the leash joins the short rows
    assert [r for r, _ in split_passes] == [6 + leash, 3] and split_passes[1][1] > 40 > split_passes[0][1]
    assert one_pass == [(9 + leash, split_passes[1][1])]
    assert split == pytest.approx(joint, rel=1e-5, abs=1e-7)
    for a, b in zip(g_joint, g_split):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
