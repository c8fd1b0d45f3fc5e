import math

import pytest
import torch

from coherentize.evaluate.capability import run_capability
from coherentize.evaluate.scoring import text_token_logprobs
from coherentize.testing import tiny_model

TEXTS = [{"id": "t1", "text": "The library opens at nine in the morning."},
         {"id": "t2", "text": "Bread is made from flour, water and yeast."}]


def test_kl_to_itself_is_zero_and_to_another_model_positive(tiny_lm, tiny_tok):
    s, _, _ = run_capability(tiny_lm, tiny_tok, TEXTS, [], chat=True, reference_model=tiny_lm, n_boot=50)
    assert s["kl_to_reference"]["mean"] == pytest.approx(0.0, abs=1e-6)
    s2, _, _ = run_capability(tiny_lm, tiny_tok, TEXTS, [], chat=True, reference_model=tiny_model(tiny_tok, seed=3),
                              n_boot=50)
    assert s2["kl_to_reference"]["mean"] > 1e-4


def test_perplexity_matches_a_direct_computation(tiny_lm, tiny_tok):
    s, _, per_item = run_capability(tiny_lm, tiny_tok, TEXTS[:1], [], chat=True, n_boot=50)
    ids = tiny_tok(TEXTS[0]["text"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = tiny_lm(ids).logits[0, :-1]
    nll = float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))
    assert per_item["capability.nll"]["t1"] == pytest.approx(nll, rel=1e-4)
    assert s["perplexity"]["mean"] == pytest.approx(math.exp(nll), rel=1e-4)


def test_text_token_logprobs_shapes(tiny_lm, tiny_tok):
    (lp, y), = text_token_logprobs(tiny_lm, tiny_tok, ["Alice and Bob"])
    assert lp.shape[0] == y.shape[0] and lp.shape[1] == len(tiny_tok)


def test_cloze_accuracy_picks_the_most_probable_answer_text(tiny_lm, tiny_tok):
    from coherentize.evaluate.scoring import sequence_logprob
    from coherentize.evaluate.sycophancy import from_mc

    item = from_mc({"id": "q", "question": "What is the capital of France?", "choices": ["Paris", "Lyon"],
                    "answer": "A"})
    s, _, per_item = run_capability(tiny_lm, tiny_tok, TEXTS[:1], [item], chat=True, n_boot=50)
    lp = sequence_logprob(tiny_lm, tiny_tok, [item["question"]] * 2, item["choices"], True)
    best = "A" if lp[0] / 5 > lp[1] / 4 else "B"
    assert per_item["capability.mc_cloze_correct"]["q"] == float(best == "A")
    assert s["mc_cloze_accuracy"]["n"] == 1
