"""Teacher-forced passes (evaluate/scoring.py): batched and left-padded equals one row at a time."""

import torch

from coherentize.chat import encode
from coherentize.evaluate import scoring
from coherentize.generation import OpeningTree

PROMPTS = ["Tell me the weather.", "What is two plus two, and why is it four rather than five?", "hi",
           "Name three colours that are in a rainbow.", "Why?"]


@torch.no_grad()
def alone_logprobs(model, tok, prompt, cont):
    p = encode(tok, prompt, True)
    c = tok(cont, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([p + c])).logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    return lp[len(p) - 1 : len(p) + len(c) - 1], c


def test_continuation_logprobs_batched_equal_one_row_at_a_time(tiny_lm, tiny_tok):
    conts = ["Sure, here it is.", "No.", "", "Red, orange and yellow are three.", "Because."]
    got = scoring.continuation_logprobs(tiny_lm, tiny_tok, PROMPTS, conts, True, batch_size=3)
    for p, c, lp in zip(PROMPTS, conts, got):
        if not c:
            p_ids = encode(tiny_tok, p, True)
            want = torch.log_softmax(tiny_lm(input_ids=torch.tensor([p_ids])).logits[0, -1:].float(), -1)
        else:
            want, _ = alone_logprobs(tiny_lm, tiny_tok, p, c)
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)


def test_sequence_logprob(tiny_lm, tiny_tok):
    conts = ["Sure.", "Four.", "Hello there.", "Red.", "Because I said so."]
    got = scoring.sequence_logprob(tiny_lm, tiny_tok, PROMPTS, conts, True, batch_size=2)
    for p, c, v in zip(PROMPTS, conts, got):
        lp, ids = alone_logprobs(tiny_lm, tiny_tok, p, c)
        assert abs(v - float(lp.gather(-1, torch.tensor(ids)[:, None]).sum())) < 1e-4


def test_last_token_hidden_equals_a_single_row_and_the_last_block_is_before_the_final_norm(tiny_lm, tiny_tok):
    got = scoring.last_token_hidden(tiny_lm, tiny_tok, PROMPTS, True, batch_size=4)  # (N, L, H)
    for p, h in zip(PROMPTS, got):
        ids = encode(tiny_tok, p, True)
        seen = {}
        handle = tiny_lm.model.norm.register_forward_pre_hook(lambda _m, args: seen.update(pre_norm=args[0]))
        try:
            hs = tiny_lm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        # transformers' last hidden state is after the final norm; the residual stream is the norm's input
        want = torch.stack([x[0, -1] for x in hs[1:-1]] + [seen["pre_norm"][0, -1]])
        torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-5)


def test_opening_tree_scores_equal_teacher_forcing(tiny_lm, tiny_tok):
    # openings sharing first tokens, single-token ones and a repeated one
    openings = ["I'm sorry", "I'm unable", "I cannot", "Sure", "Sure thing", "Sorry", "(A", "A", "Sure"]
    tree = OpeningTree.build(tiny_tok, openings)
    n_tokens = sum(len(tiny_tok(o, add_special_tokens=False)["input_ids"]) for o in openings)
    assert len(tree.tokens) < n_tokens - len(openings)  # shared prefixes are one node
    got = scoring.openings_logprob(tiny_lm, tiny_tok, PROMPTS, openings, True, batch_size=2)
    for p, row in zip(PROMPTS, got):
        for o, v in zip(openings, row):
            lp, ids = alone_logprobs(tiny_lm, tiny_tok, p, o)
            assert abs(float(v) - float(lp.gather(-1, torch.tensor(ids)[:, None]).sum())) < 1e-4


def test_text_token_logprobs_equal_a_single_row(tiny_lm, tiny_tok):
    texts = ["Alice and Bob went to the market.", "Short.", "A somewhat longer text about nothing much at all."]
    got = scoring.text_token_logprobs(tiny_lm, tiny_tok, texts, batch_size=2)
    for t, (lp, y) in zip(texts, got):
        ids = tiny_tok(t, add_special_tokens=True)["input_ids"]
        want = torch.log_softmax(tiny_lm(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
        assert y.tolist() == ids[1:]


def test_last_token_hidden_builds_no_autograd_graph_on_a_trainable_model():
    """Called on a model in training (mining, the mined arm), the pass must not keep a graph."""
    from coherentize.evaluate.scoring import last_token_hidden
    from coherentize.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    assert any(p.requires_grad for p in model.parameters())
    h = last_token_hidden(model, tok, ["hello there", "a b c"], chat=False)
    assert h.shape[0] == 2 and not h.requires_grad and h.grad_fn is None


def test_each_rows_own_openings_equal_teacher_forcing(tiny_lm, tiny_tok):
    # every prompt its own options: different counts and lengths, shared first tokens, one list repeated
    options = [["Paris", "Paris, France", "Lyon"], ["four", "five"], ["yes", "no", "maybe", "I'm not sure at all"],
               ["red", "green"], ["four", "five"]]
    got = scoring.row_openings_logprob(tiny_lm, tiny_tok, PROMPTS, options, True, batch_size=2)
    assert [len(r) for r in got] == [len(o) for o in options]
    for p, opts, row in zip(PROMPTS, options, got):
        for o, v in zip(opts, row):
            lp, ids = alone_logprobs(tiny_lm, tiny_tok, p, o)
            assert abs(v - float(lp.gather(-1, torch.tensor(ids)[:, None]).sum())) < 1e-4
    # the same values as one prompt with its openings at a time (the capability probe's previous path)
    for p, opts, row in zip(PROMPTS, options, got):
        one = scoring.openings_logprob(tiny_lm, tiny_tok, [p], opts, True, 1)[0].tolist()
        assert row == __import__("pytest").approx(one, abs=1e-5)


def test_shared_openings_scores_a_prompt_once_per_model(tiny_lm, tiny_tok, monkeypatch):
    import pytest

    from coherentize.testing import tiny_model

    openings = ["A", " A", "(A", "B", " B", "(B"]
    plain = scoring.openings_logprob(tiny_lm, tiny_tok, PROMPTS, openings, True, batch_size=2)
    scored = []
    real = scoring.generate_greedy
    monkeypatch.setattr(scoring, "generate_greedy", lambda m, t, ps, *a, **k: scored.append(len(ps)) or real(m, t, ps, *a, **k))
    other = tiny_model(tiny_tok, seed=9).eval()
    with scoring.shared_openings():
        first = scoring.openings_logprob(tiny_lm, tiny_tok, PROMPTS[:3], openings, True, batch_size=2)
        again = scoring.openings_logprob(tiny_lm, tiny_tok, PROMPTS[1:] + PROMPTS[1:2], openings, True, batch_size=2)
        theirs = scoring.openings_logprob(other, tiny_tok, PROMPTS[:3], openings, True, batch_size=2)
        fewer = scoring.openings_logprob(tiny_lm, tiny_tok, PROMPTS[:2], openings[:3], True, batch_size=2)
    assert scored == [3, 2, 3, 2]  # only the prompts not scored before; another model or other openings: again
    assert torch.equal(again[0], first[1]) and torch.equal(again[-1], first[1])
    torch.testing.assert_close(torch.cat([first, again[2:4]]), plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(theirs, first)
    assert fewer.shape == (2, 3)
    scored.clear()
    scoring.openings_logprob(tiny_lm, tiny_tok, PROMPTS[:3], openings, True, batch_size=2)
    assert scored == [3]  # outside the block nothing is kept


def test_length_chunks_cut_where_padding_costs_more_than_a_call(tiny_lm, tiny_tok, monkeypatch):
    from coherentize import generation

    assert scoring._length_chunks([7, 3, 5, 1], [60, 12, 11, 10], 4) == [[7], [3, 5, 1]]  # not 3 rows padded to 60
    even = scoring._length_chunks([0, 1, 2, 3, 4], [9, 9, 9, 9, 9], 2)
    assert sorted(len(b) for b in even) == [1, 2, 2] and sum(even, []) == [0, 1, 2, 3, 4]
    monkeypatch.setattr(generation, "PACK", False)
    assert scoring._length_chunks([7, 3, 5, 1], [60, 12, 11, 10], 4) == [[7, 3, 5, 1]]  # the previous fixed slices
    # a long row among short ones: its own batch, and the same log-probs as one row at a time
    prompts = PROMPTS + ["A much longer prompt, " * 12]
    conts = ["Sure."] * len(prompts)
    monkeypatch.setattr(generation, "PACK", True)
    got = scoring.continuation_logprobs(tiny_lm, tiny_tok, prompts, conts, True, batch_size=6)
    for p, c, lp in zip(prompts, conts, got):
        torch.testing.assert_close(lp, alone_logprobs(tiny_lm, tiny_tok, p, c)[0], atol=1e-5, rtol=1e-5)
