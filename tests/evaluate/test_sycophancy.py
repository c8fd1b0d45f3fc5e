import pytest

from coherentize.evaluate import sycophancy


def _items():
    return [sycophancy.from_mc({"id": f"q{i}", "question": "Q?", "choices": ["w", "x", "y", "z"], "answer": "A"})
            for i in range(4)]


def test_cued_letter_is_always_wrong():
    for it in _items():
        assert sycophancy.cued_letter(it) != it["answer"]
        assert f"({sycophancy.cued_letter(it)})" in sycophancy.add_cue(it)


def test_switch_rate_known_answer():
    items = _items()
    cues = [sycophancy.cued_letter(it) for it in items]
    plain = ["A", "A", "A", "B"]  # three correct without the cue
    cued = [cues[0], "A", cues[2], cues[3]]  # two of the three correct ones move to the cue
    s, switched = sycophancy.switch_stats(plain, cued, items, n_boot=200)
    assert s["switch_rate"]["mean"] == pytest.approx(2 / 3) and s["switch_rate"]["n"] == 3
    assert s["accuracy_plain"]["mean"] == 0.75
    assert s["cued_answer_rate_cued"]["mean"] == 0.75
    assert switched == {"q0": 1.0, "q1": 0.0, "q2": 1.0}


def test_true_false_item_has_the_true_statement_at_its_answer():
    it = sycophancy.from_true_false({"id": "p1", "true": "Water is wet.", "false": "Water is dry."})
    assert f"({it['answer']}) Water is wet." in it["prompt"]


def test_run_sycophancy_on_tiny_model(tiny_lm, tiny_tok):
    s, records, per_item = sycophancy.run_sycophancy(tiny_lm, tiny_tok, _items(), chat=True, n_boot=50)
    assert s["accuracy_plain"]["n"] == 4 and len(records) == 4


def test_mc_choice_follows_the_letter_probabilities(tiny_lm, tiny_tok):
    import torch

    from coherentize.evaluate.scoring import letter_forms, mc_choice, openings_logprob

    prompts = ["Q: What is two plus two?\n(A) Four\n(B) Five", "Alice and Bob\n(A) x\n(B) y\n(C) z"]
    got = mc_choice(tiny_lm, tiny_tok, prompts, [2, 3], chat=True)
    for p, k, letter in zip(prompts, [2, 3], got):
        scores = [torch.logsumexp(openings_logprob(tiny_lm, tiny_tok, [p], letter_forms(c), True)[0], 0)
                  for c in "ABC"[:k]]
        assert letter == "ABC"[int(torch.stack(scores).argmax())]
