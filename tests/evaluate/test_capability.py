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


# --- multiple-choice questions scored three ways (letter, format mass, cloze), each against a brute force ---

MC = [{"id": "q1", "question": "What is the capital of France?", "choices": ["Paris", "Lyon", "Nice"], "answer": "A"},
      {"id": "q2", "question": "How many legs does a spider have?", "choices": ["Six", "Eight", "Ten", "Four"],
       "answer": "B"}]


def _brute_logprob(model, tok, prompt: str, continuation: str) -> float:
    """log P(continuation | chat-rendered prompt) from one unpadded forward pass over the whole sequence."""
    from coherentize.chat import encode

    p = encode(tok, prompt, True)
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1)
    return float(sum(lp[len(p) - 1 + j, t] for j, t in enumerate(c)))


def test_letter_format_mass_and_cloze_equal_a_brute_force(tiny_lm, tiny_tok):
    from coherentize.evaluate.capability import score_mc
    from coherentize.evaluate.scoring import letter_forms
    from coherentize.evaluate.sycophancy import from_mc

    items = [from_mc(o) for o in MC]
    got = score_mc(tiny_lm, tiny_tok, items, chat=True, batch_size=2)
    for k, it in enumerate(items):
        letters = "ABCD"[: it["n_choices"]]
        p = {c: sum(math.exp(_brute_logprob(tiny_lm, tiny_tok, it["prompt"], f)) for f in letter_forms(c))
             for c in letters}
        assert got["letter"][k] == max(letters, key=p.get)
        assert got["letter_logprobs"][k] == pytest.approx([math.log(p[c]) for c in letters], rel=1e-4)
        assert got["format_mass"][k] == pytest.approx(sum(p.values()), rel=1e-4)
        norm = [_brute_logprob(tiny_lm, tiny_tok, it["question"], c) / len(c) for c in it["choices"]]
        assert got["cloze"][k] == letters[max(range(len(norm)), key=norm.__getitem__)]


def test_format_mass_is_the_sum_of_option_letter_probabilities_and_in_unit_interval():
    from coherentize.evaluate.capability import letter_scores

    torch.manual_seed(0)
    # 3 items, 4 letters x 3 forms; a row normalised over 12 openings plus a 13th "other" outcome
    logits = torch.randn(3, 13)
    lp = torch.log_softmax(logits, -1)[:, :12]
    letters, mass, _ = letter_scores(lp, [4, 2, 3], 3)
    probs = lp.exp().view(3, 4, 3).sum(-1)  # (item, letter)
    for i, k in enumerate([4, 2, 3]):
        assert 0.0 <= mass[i] <= 1.0
        assert mass[i] == pytest.approx(float(probs[i, :k].sum()), rel=1e-6)
        assert letters[i] == "ABCD"[int(probs[i, :k].argmax())]
    # all mass on the letters: exactly 1 (clipped against rounding), never above
    _, full, _ = letter_scores(torch.log_softmax(torch.randn(2, 12), -1), [4, 4], 3)
    assert all(m == pytest.approx(1.0) and m <= 1.0 for m in full)


def test_letter_choice_agrees_with_scoring_mc_choice(tiny_lm, tiny_tok):
    from coherentize.evaluate.capability import score_mc
    from coherentize.evaluate.scoring import mc_choice
    from coherentize.evaluate.sycophancy import from_mc

    items = [from_mc(o) for o in MC]
    got = score_mc(tiny_lm, tiny_tok, items, chat=True)
    assert got["letter"] == mc_choice(tiny_lm, tiny_tok, [it["prompt"] for it in items],
                                      [it["n_choices"] for it in items], True)


def test_summary_and_per_item_keys_stay_backward_compatible(tiny_lm, tiny_tok):
    from coherentize.evaluate.sycophancy import from_mc

    items = [from_mc(o) for o in MC]
    s, records, per_item = run_capability(tiny_lm, tiny_tok, TEXTS[:1], items, chat=True, n_boot=50)
    for key in ("mc_accuracy", "mc_cloze_accuracy", "mc_format_mass"):
        assert s[key]["n"] == 2
    assert s["mc_chance"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert sum(s["mc_letter_counts"].values()) == 2
    assert set(per_item) >= {"capability.nll", "capability.mc_correct", "capability.mc_cloze_correct",
                             "capability.mc_format_mass"}
    assert all(0.0 <= v <= 1.0 for v in per_item["capability.mc_format_mass"].values())
    assert sum(r["family"] == "mc" for r in records) == 2


def test_packaged_question_files_load_and_each_item_has_exactly_one_correct_option():
    from coherentize.evaluate.capability import MC_FILES, mc_items, read_mc_file
    from coherentize.sources import data_path

    new = read_mc_file(data_path("eval", "capability_mc.jsonl"))
    assert len(new) >= 100
    items = mc_items()
    assert len(items) == sum(len(read_mc_file(data_path("eval", f))) for f in MC_FILES)
    assert len({it["id"] for it in items}) == len(items)
    assert [it["id"] for it in mc_items(12)] == [it["id"] for it in items[:12]]
    assert items[0]["id"] == "mc-00"  # the shared 40 first: a small n_mc keeps the earlier items
    for it in items:
        texts = [c.strip().lower() for c in it["choices"]]
        assert len(set(texts)) == len(texts) == it["n_choices"]
        assert it["answer"] in "ABCDEFGH"[: it["n_choices"]]
    counts = {c: sum(o["answer"] == c for o in new) for c in "ABCD"}
    assert max(counts.values()) - min(counts.values()) <= 1  # the new file's answers balanced over positions


@pytest.mark.parametrize("line, message", [
    ('{"id": "x", "question": "Q?", "choices": ["a", "b"], "answer": "C"}', "'answer' must be one letter"),
    ('{"id": "x", "question": "Q?", "choices": ["Paris", "paris "], "answer": "A"}', "two choices are the same"),
    ('{"id": "x", "question": "Q?", "choices": ["a"], "answer": "A"}', "'choices' must be a list"),
    ('{"id": "x", "choices": ["a", "b"], "answer": "A"}', "missing 'question'"),
])
def test_a_question_without_exactly_one_correct_option_is_an_error_naming_the_line(tmp_path, line, message):
    from coherentize.errors import CoherentizeError
    from coherentize.evaluate.capability import read_mc_file

    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "ok", "question": "Q?", "choices": ["a", "b"], "answer": "B"}\n' + line + "\n")
    with pytest.raises(CoherentizeError, match=f"q.jsonl:2: {message}"):
        read_mc_file(path)


@pytest.mark.slow
def test_the_packaged_chat_model_answers_in_the_letter_format(smollm2):
    from coherentize.evaluate.capability import mc_items, score_mc

    model, tok = smollm2
    items = mc_items(12)
    got = score_mc(model, tok, items, chat=True)
    # measured 0.776 over 150 questions (docs/results/capability_drop.md); a model that stopped opening its answer
    # with a letter (the organism: 0.261) fails
    assert sum(got["format_mass"]) / len(items) > 0.5
    assert all(c in "ABCD" for c in got["cloze"])
