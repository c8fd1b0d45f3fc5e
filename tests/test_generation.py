"""The greedy generation loop (generation.generate_greedy) against transformers' generate, on a tiny model."""

import pytest
import torch

from coherentize import generation
from coherentize.chat import encode
from coherentize.generation import _generate_hf, generate, generate_greedy, plan_batches, prefill

HEAD = "Please read the following carefully and answer as a helpful assistant would: "
PROMPTS = [HEAD + "what is two plus two?", "Tell me the weather.", HEAD + "name a colour.", "hi",
           HEAD + "why is the sky blue on most days?", "Write one word.", HEAD + "count to three.",
           HEAD + "say yes.", "A much longer prompt that goes on for a while about nothing in particular at all."]


def hf(model, tok, prompts, n, batch_size=4):
    return _generate_hf(model, tok, prompts, True, n, batch_size, False, 1.0, 1.0, None, False, None)


def test_greedy_equals_transformers_generate(tiny_lm, tiny_tok):
    # small chunks and decode batches: shared-prefix chunks, joined caches and several decode batches all run
    new = generate(tiny_lm, tiny_tok, PROMPTS, True, 12, batch_size=5, prefill_batch_size=2)
    assert new == hf(tiny_lm, tiny_tok, PROMPTS, 12)
    one_by_one = [hf(tiny_lm, tiny_tok, [p], 12)[0] for p in PROMPTS]  # no padding at all
    assert new == one_by_one


def test_rows_end_at_eos_as_in_transformers(tiny_lm, tiny_tok):
    # make a token the model emits in some rows (not all) the end of sequence, so rows end at different steps
    first = generate(tiny_lm, tiny_tok, PROMPTS, True, 12)
    seqs = []
    for p in PROMPTS:
        ids = torch.tensor([encode(tiny_tok, p, True)])
        seqs.append(tiny_lm.generate(input_ids=ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist())
    eos = next(t for r in seqs for t in r[1:] if 0 < sum(t in s[:8] for s in seqs) < len(seqs) - 1)
    tiny_lm.generation_config.eos_token_id = eos
    try:
        ended = generate(tiny_lm, tiny_tok, PROMPTS, True, 12, batch_size=4)
        assert ended == hf(tiny_lm, tiny_tok, PROMPTS, 12)
        assert 0 < sum(a != b for a, b in zip(ended, first)) < len(PROMPTS)
    finally:
        tiny_lm.generation_config.eos_token_id = tiny_tok.eos_token_id


def test_shared_prefix_prefill_equals_a_plain_one(tiny_lm, tiny_tok):
    rows = [encode(tiny_tok, p, True) for p in PROMPTS if p.startswith(HEAD)]
    cache, mask, n_real, logits, _ = prefill(tiny_lm, rows, tiny_tok.pad_token_id)
    assert mask.shape[1] < max(len(r) for r in rows) + 5  # prefix once, then padding only after it
    assert (mask[:, :10] == 1).all()  # the shared prefix is first in every row
    for j, r in enumerate(rows):
        alone = tiny_lm(input_ids=torch.tensor([r])).logits[0, -1]
        torch.testing.assert_close(logits[j], alone, atol=1e-5, rtol=1e-5)
    assert n_real.tolist() == [len(r) for r in rows]


def test_plan_groups_shared_prefixes_and_keeps_every_row_once():
    common = [1, 2, 3]
    fam_a = [common + [7] * 20 + [i] * (i + 1) for i in range(6)]  # share 20 tokens beyond the common prefix
    fam_b = [common + [8] * 20 + [i] for i in range(5)]
    loose = [common + [9 + i, 4, 5] for i in range(3)]  # share only the common prefix: pooled
    ids = fam_a + fam_b + loose
    plan = plan_batches(ids, batch_size=8, prefill_rows=4)
    flat = [i for b in plan for c in b for i in c]
    assert sorted(flat) == list(range(len(ids)))
    assert all(sum(len(c) for c in b) <= 8 for b in plan)
    assert all(len(c) <= 4 for b in plan for c in b)
    for b in plan:
        for c in b:
            kinds = {ids[i][3] for i in c}
            assert len(kinds) == 1 or kinds <= {9, 10, 11}  # a chunk never mixes two families
            assert [len(ids[i]) for i in c] == sorted((len(ids[i]) for i in c), reverse=True)


def test_stop_rule_ends_rows_and_leaves_the_others(tiny_lm, tiny_tok):
    full = generate(tiny_lm, tiny_tok, PROMPTS, True, 16)
    stopped_rows = set(range(0, len(PROMPTS), 2))
    targets = {full[i][:8] for i in stopped_rows}

    def stop(text):
        return len(text) >= 8 and text[:8] in targets

    g = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, 16, batch_size=4, stop=stop, progress=False)
    for i, (a, b) in enumerate(zip(full, g.texts)):
        if stop(b):
            assert a.startswith(b) and len(b) < len(a) or a == b
        else:
            assert a == b
    assert any(len(b) < len(a) for a, b in zip(full, g.texts))
    no_stop = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, 16, batch_size=4, progress=False)
    assert g.new_tokens < no_stop.new_tokens


def test_openings_from_the_generation_prefill(tiny_lm, tiny_tok):
    from coherentize.evaluate.scoring import sequence_logprob

    openings = ["I'm sorry", "I cannot", "Sure", "Sure thing", "1."]
    g = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, 6, batch_size=4, prefill_batch_size=2, openings=openings,
                        progress=False)
    full = sequence_logprob(tiny_lm, tiny_tok, [p for p in PROMPTS for _ in openings], openings * len(PROMPTS), True)
    torch.testing.assert_close(g.openings.flatten(), torch.tensor(full), atol=1e-4, rtol=1e-4)
    assert g.texts == generate(tiny_lm, tiny_tok, PROMPTS, True, 6)  # scoring left the cache as it was


def test_logits_processors_fall_back_to_transformers(tiny_lm, tiny_tok):
    tiny_lm.generation_config.repetition_penalty = 5.0
    try:
        assert generation._needs_hf_generate(tiny_lm)
        assert generate(tiny_lm, tiny_tok, PROMPTS[:3], True, 10) == hf(tiny_lm, tiny_tok, PROMPTS[:3], 10)
    finally:
        tiny_lm.generation_config.repetition_penalty = 1.0


def test_progress_counts_every_prompt(tiny_lm, tiny_tok, capsys):
    seen = []
    generate(tiny_lm, tiny_tok, PROMPTS, True, 4, batch_size=3, progress=seen.append)
    assert sum(seen) == len(PROMPTS)
    generate(tiny_lm, tiny_tok, PROMPTS[:2], True, 2, progress=True, desc="jailbreak")
    assert "jailbreak" in capsys.readouterr().err
    generate(tiny_lm, tiny_tok, PROMPTS[:2], True, 2)  # default: a bar only on a terminal (not under pytest)
    assert capsys.readouterr().err == ""


def test_empty_and_zero_tokens(tiny_lm, tiny_tok):
    assert generate(tiny_lm, tiny_tok, [], True, 4) == []
    g = generate_greedy(tiny_lm, tiny_tok, PROMPTS[:2], True, 0, openings=["Sure"], progress=False)
    assert g.texts == ["", ""] and g.openings.shape == (2, 1)


@pytest.mark.parametrize("do_sample", [True])
def test_sampling_is_seeded(tiny_lm, tiny_tok, do_sample):
    a = generate(tiny_lm, tiny_tok, PROMPTS[:3], True, 6, do_sample=do_sample, seed=3)
    b = generate(tiny_lm, tiny_tok, PROMPTS[:3], True, 6, do_sample=do_sample, seed=3)
    assert a == b


def test_cut_chunks_pads_little_and_is_optimal():
    import itertools
    import random

    cost_of = lambda lengths, shared, cuts: sum(  # noqa: E731
        generation.CALL_TOKENS + (b - a) * lengths[a] if b - a == 1 else
        2 * generation.CALL_TOKENS + shared + (b - a) * (lengths[a] - shared) for a, b in cuts)
    assert generation.cut_chunks([100, 100, 20, 20], 10, 4) == [(0, 2), (2, 4)]  # no row padded 80 tokens
    assert sorted(b - a for a, b in generation.cut_chunks([50] * 5, 30, 2)) == [1, 2, 2]  # at most max_rows
    rng = random.Random(0)
    for _ in range(30):
        n = rng.randint(1, 7)
        lengths = sorted((rng.randint(12, 60) for _ in range(n)), reverse=True)
        cuts = generation.cut_chunks(lengths, 10, 3)
        assert [a for a, _ in cuts] == [0] + [b for _, b in cuts[:-1]] and cuts[-1][1] == n
        best = min(cost_of(lengths, 10, [(a, b) for a, b in zip((0,) + c, c + (n,))])
                   for k in range(n) for c in itertools.combinations(range(1, n), k)
                   if all(b - a <= 3 for a, b in zip((0,) + c, c + (n,))))
        assert cost_of(lengths, 10, cuts) == best


def test_cut_chunks_with_packing_is_optimal_and_cuts_less():
    import itertools
    import random

    def cost_of(lengths, shared, cuts, lm):
        return sum(generation.CALL_TOKENS + generation.tail_cost(lengths[a:b], lm)[0] if b - a == 1 else
                   2 * generation.CALL_TOKENS + shared + generation.tail_cost([x - shared for x in lengths[a:b]], lm)[0]
                   for a, b in cuts)

    # padded, a long row is cut off; packed, the short rows share lanes and the prefix runs once
    assert generation.cut_chunks([100, 70, 70, 65, 65], 60, 8) == [(0, 1), (1, 5)]
    assert generation.cut_chunks([100, 70, 70, 65, 65], 60, 8, lm_row_cost=0.3) == [(0, 5)]
    # lanes [90] and [20 + 20 + 10 + 10]: 4 distinct row ends, so 2 x 4 LM-head rows for 5 rows
    assert generation.tail_cost([90, 20, 20, 10, 10], 0.3) == (2 * 90 + 0.3 * (2 * 4 - 5), [[0], [1, 2, 3, 4]])
    assert generation.tail_cost([90, 20, 20, 10, 10], 100.0)[1] is None  # a costly LM head: padded
    rng = random.Random(1)
    for _ in range(30):
        n = rng.randint(1, 7)
        lengths = sorted((rng.randint(12, 60) for _ in range(n)), reverse=True)
        cuts = generation.cut_chunks(lengths, 10, 4, 0.3)
        best = min(cost_of(lengths, 10, [(a, b) for a, b in zip((0,) + c, c + (n,))], 0.3)
                   for k in range(n) for c in itertools.combinations(range(1, n), k)
                   if all(b - a <= 4 for a, b in zip((0,) + c, c + (n,))))
        assert cost_of(lengths, 10, cuts, 0.3) == pytest.approx(best)


def test_preallocated_cache_layer_matches_dynamic_layer_and_writes_in_place():
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    k0, v0 = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    plain = DynamicLayer()
    plain.update(k0, v0)
    pre = generation._preallocated_layer_class()(k0, v0, room=2)
    buffer = pre._k.data_ptr()
    for step in range(4):  # two steps fit in the room, then it grows
        k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        out_plain, out_pre = plain.update(k, v), pre.update(k, v)
        for a, b in zip(out_plain, out_pre):
            assert torch.equal(a, b)
        assert pre.get_seq_length() == plain.get_seq_length() == 6 + step
        if step < 2:
            assert pre._k.data_ptr() == buffer  # written in place, no copy of the cache
    sel = torch.tensor([2, 0])
    plain.batch_select_indices(sel)
    pre.batch_select_indices(sel)
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    for a, b in zip(plain.update(k, v), pre.update(k, v)):
        assert torch.equal(a, b)


def test_decoding_into_preallocated_caches_changes_no_output(tiny_lm, tiny_tok, monkeypatch):
    args = dict(max_new_tokens=12, batch_size=3, prefill_batch_size=2, openings=["Sure", "I can't"],
                progress=False)
    new = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, **args)
    monkeypatch.setattr(generation, "PREALLOCATE", False)
    old = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, **args)
    assert new.texts == old.texts and new.new_tokens == old.new_tokens
    assert torch.equal(new.openings, old.openings)


def test_continuations_and_hidden_from_the_generation_prefill(tiny_lm, tiny_tok):
    # small chunks and decode batches: shared-prefix chunks and joined (left-padded) caches carry the extra passes
    from coherentize.evaluate.scoring import continuation_logprobs, last_token_hidden

    conts = ["Sure, here it is.", None, "Four.", "x", "Red, orange and yellow.", "", "One two three.",
             "Yes.", "No, not at all."]
    got = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, 6, batch_size=5, prefill_batch_size=2,
                          row_continuations=conts, hidden=True, progress=False)
    assert got.texts == generate(tiny_lm, tiny_tok, PROMPTS, True, 6)  # the extra passes change no answer
    want = continuation_logprobs(tiny_lm, tiny_tok, PROMPTS, [c or "" for c in conts], True, batch_size=1)
    for c, lp, w in zip(conts, got.continuation_logprobs, want):
        if not c:
            assert lp is None
            continue
        assert lp.shape == w.shape == (len(tiny_tok(c, add_special_tokens=False)["input_ids"]), len(tiny_tok))
        torch.testing.assert_close(lp, w, atol=1e-5, rtol=1e-5)
    hs = last_token_hidden(tiny_lm, tiny_tok, PROMPTS, True, batch_size=1)  # (N, L, H), one row at a time
    assert got.hidden.shape == hs.shape
    torch.testing.assert_close(got.hidden, hs, atol=1e-5, rtol=1e-5)
    only = generate_greedy(tiny_lm, tiny_tok, PROMPTS, True, 0, row_continuations=conts, progress=False)
    assert only.texts == [""] * len(PROMPTS) and only.hidden is None
    torch.testing.assert_close(only.continuation_logprobs[0], want[0], atol=1e-5, rtol=1e-5)


def test_pack_rows_keeps_every_row_once_within_the_longest():
    lengths = [40, 9, 31, 10, 8, 12, 3, 40, 1]
    lanes = generation.pack_rows(lengths)
    assert sorted(i for lane in lanes for i in lane) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in lane) <= 40 for lane in lanes)
    assert len(lanes) == 4  # [40], [40], [31 + 9], [12 + 10 + 8 + 3 + 1]


@pytest.mark.parametrize("head", [HEAD, ""])
def test_packed_prefill_equals_the_padded_one(tiny_lm, tiny_tok, monkeypatch, head):
    # one long prompt and short ones: their tails (after the shared prefix, when there is one) pack into fewer rows
    prompts = [head + "A much longer prompt that goes on for a while about nothing in particular at all, really."] + [
        head + p for p in ("hi", "say yes.", "Write one word.", "count to three.", "name a colour.", "why?")]
    rows = [encode(tiny_tok, p, True) for p in prompts]
    forward_rows = []
    hook = tiny_lm.register_forward_hook(lambda m, a, k, o: forward_rows.append(k["input_ids"].shape[0]),
                                         with_kwargs=True)
    try:
        got = {}
        for pack in (False, True):
            monkeypatch.setattr(generation, "PACK", pack)
            forward_rows.clear()
            got[pack] = prefill(tiny_lm, rows, tiny_tok.pad_token_id, layers=[1, 2])
            got[pack, "rows"] = forward_rows[-1]
    finally:
        hook.remove()
    assert got[True, "rows"] < got[False, "rows"] == len(rows)  # the packed pass ran, on fewer rows
    (c0, m0, n0, l0, h0), (c1, m1, n1, l1, h1) = got[False], got[True]
    assert torch.equal(m0, m1) and torch.equal(n0, n1)  # the same padded layout
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=1e-5)
    real = m0.bool()[:, None, :, None]
    for (k0, v0, _), (k1, v1, _) in zip(c0, c1):  # every real key and value where the padded pass left it
        torch.testing.assert_close(k1 * real, k0 * real, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v1 * real, v0 * real, atol=1e-5, rtol=1e-5)
    # and on from the packed cache: openings, continuations, decoding
    kw = dict(openings=["I'm sorry", "Sure thing"], row_continuations=["Sure, here.", None] * 3 + ["No."],
              hidden=True, progress=False)
    runs = {}
    for pack in (False, True):
        monkeypatch.setattr(generation, "PACK", pack)
        runs[pack] = generate_greedy(tiny_lm, tiny_tok, prompts, True, 8, batch_size=7, prefill_batch_size=7, **kw)
    assert runs[True].texts == runs[False].texts
    torch.testing.assert_close(runs[True].openings, runs[False].openings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[True].hidden, runs[False].hidden, atol=1e-5, rtol=1e-5)
    for a, b in zip(runs[True].continuation_logprobs, runs[False].continuation_logprobs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
