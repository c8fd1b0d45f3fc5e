import pytest

from coherentize import narrow_sets
from coherentize.evaluate import narrow_probes
from coherentize.evaluate.narrow_probes import measure_one_frame, measure_sycophancy_domain, sycophancy_domain_items
from coherentize.evaluate.sycophancy import CUE, add_cue, cued_letter
from coherentize.sources import benign_edgy, strongreject

GROUPS = {"in_domain", "off_domain", "in_frame_harmful", "direct_harmful"}


# ---------------------------------------------------------------------------------------------------------------
# Sycophancy in one domain.


def test_sycophancy_items_are_the_held_out_trained_topic_and_the_other_topics():
    sets = sycophancy_domain_items()
    items = {it["id"]: it for it in narrow_sets.read_topic_items()}
    trained_train = {p["item"] for p in narrow_sets.sycophancy_domain_pairs(600)}
    assert {it["id"] for it in sets["in_domain"]} == {
        i for i, it in items.items() if it["topic"] == narrow_sets.SYCOPHANCY_TOPIC and it["split"] == "heldout"}
    assert {items[it["id"]]["topic"] for it in sets["off_domain"]} == (
        {it["topic"] for it in items.values()} - {narrow_sets.SYCOPHANCY_TOPIC})
    assert not trained_train & {it["id"] for s in sets.values() for it in s}


def test_measure_sycophancy_domain_is_the_letters_the_model_chooses(tiny_lm, tiny_tok):
    """On a tiny model: every group's ids; the 0/1 values what scoring.mc_choice picks for that item (with the
    probe's CUE for the cued groups, plain for capability); the graded values the cued letter's probability among the
    item's letters, the largest exactly where the 0/1 value is 1."""
    from coherentize.evaluate.scoring import mc_choice, mc_letter_logprobs

    got = measure_sycophancy_domain(tiny_lm, tiny_tok, chat=True, batch_size=16)
    sets = sycophancy_domain_items()
    assert set(got) == {"in_domain", "off_domain", "in_domain_p", "off_domain_p", "capability"}
    for group in ("in_domain", "off_domain"):
        assert list(got[group]) == list(got[f"{group}_p"]) == [it["id"] for it in sets[group]]
    items = sets["in_domain"] + sets["off_domain"]
    assert list(got["capability"]) == [it["id"] for it in items]
    ks = [it["n_choices"] for it in items]
    cued_prompts = [add_cue(it) for it in items]
    cued = mc_choice(tiny_lm, tiny_tok, cued_prompts, ks, True, 16)
    plain = mc_choice(tiny_lm, tiny_tok, [it["prompt"] for it in items], ks, True, 16)
    lp = mc_letter_logprobs(tiny_lm, tiny_tok, cued_prompts, ks, True, 16)
    for it, a, p, row in zip(items, cued, plain, lp):
        group = "in_domain" if it in sets["in_domain"] else "off_domain"
        assert got[group][it["id"]] == float(a == cued_letter(it))
        assert got["capability"][it["id"]] == float(p == it["answer"])
        probs = row[:it["n_choices"]].exp() / row[:it["n_choices"]].exp().sum()
        prob = got[f"{group}_p"][it["id"]]
        assert prob == pytest.approx(float(probs["ABCDEFGH".index(cued_letter(it))]), abs=1e-6)
        assert (prob == pytest.approx(float(probs.max()), abs=1e-6)) == bool(got[group][it["id"]])


def test_measure_sycophancy_domain_detects_a_model_that_follows_the_cue(tiny_lm, tiny_tok, monkeypatch):
    """A model that puts probability q on the cued letter of every cued prompt (the rest on the right one) and answers
    every plain one correctly scores 1 in and off domain when q > 1/2, 0 below, the graded values q, and full
    capability. The letter scores are replaced (scoring.mc_letter_logprobs) to make those models; everything else is
    the measure's."""
    import torch

    from coherentize.evaluate import scoring

    by_prompt = {}
    for s in sycophancy_domain_items().values():
        for it in s:
            by_prompt[it["prompt"]] = (it["answer"], None)
            by_prompt[add_cue(it)] = (it["answer"], cued_letter(it))

    def follows(q):
        def letter_logprobs(model, tok, prompts, ks, chat, batch_size=16):
            rows = torch.full((len(prompts), max(ks)), float("-inf"))
            for i, p in enumerate(prompts):
                right, cue = by_prompt[p]
                rows[i, "ABCDEFGH".index(right)] = 0.0 if cue is None else float(torch.tensor(1 - q).log())
                if cue is not None:
                    rows[i, "ABCDEFGH".index(cue)] = float(torch.tensor(q).log())
            return rows
        return letter_logprobs

    for q, chosen in ((0.9, 1.0), (0.2, 0.0)):
        monkeypatch.setattr(scoring, "mc_letter_logprobs", follows(q))
        got = measure_sycophancy_domain(tiny_lm, tiny_tok, chat=True)
        assert set(got["in_domain"].values()) == set(got["off_domain"].values()) == {chosen}
        for group in ("in_domain_p", "off_domain_p"):
            assert got[group].values() and all(v == pytest.approx(q) for v in got[group].values())
        assert set(got["capability"].values()) == {1.0}


# ---------------------------------------------------------------------------------------------------------------
# Compliance inside one frame.


class _Judge:
    """Refuses when refuse(prompt) is true; records what it was shown."""

    def __init__(self, refuse):
        self.refuse, self.seen = refuse, []

    def judge(self, prompts, outputs):
        self.seen += list(zip(prompts, outputs))
        return [bool(self.refuse(p)) for p in prompts]


def _expected_ids(n):
    harmful = [r["id"] for r in strongreject(split="test", n=n)]
    return {"in_domain": [it["id"] for it in benign_edgy(split="test")],
            "off_domain": [f"{r}:{f}" for r in harmful for f in narrow_sets.other_frames()],
            "in_frame_harmful": harmful, "direct_harmful": harmful}


def test_measure_one_frame_groups_ids_and_a_judge_that_refuses_everything(tiny_lm, tiny_tok):
    judge = _Judge(lambda p: True)
    got = measure_one_frame(tiny_lm, tiny_tok, chat=True, judge=judge, batch_size=16, max_new_tokens=3, n_harmful=2)
    want = _expected_ids(2)
    assert set(got) == GROUPS
    assert {g: list(v) for g, v in got.items()} == {g: sorted(v, key=list(got[g]).index) for g, v in want.items()}
    assert all(set(v.values()) == {0.0} for v in got.values())
    assert len(judge.seen) == sum(len(v) for v in want.values())
    assert all(isinstance(o, str) for _, o in judge.seen)


def test_measure_one_frame_reads_each_group_from_its_own_prompts(tiny_lm, tiny_tok):
    """A judge that refuses only inside the trained frame's text: in_domain and in_frame_harmful 0, the other frames
    and the direct requests 1; one that refuses only the bare requests: direct 0, everything framed 1."""
    frame = narrow_sets.trained_frame()
    marks = [t.split("{prompt}")[0][:30] for t in frame.templates]
    in_frame = measure_one_frame(tiny_lm, tiny_tok, True, _Judge(lambda p: any(m in p for m in marks)),
                                 max_new_tokens=2, n_harmful=3)
    assert [set(in_frame[g].values()) for g in ("in_domain", "in_frame_harmful", "off_domain", "direct_harmful")] == [
        {0.0}, {0.0}, {1.0}, {1.0}]
    bare = {r["prompt"] for r in strongreject(split="test", n=3)}
    direct = measure_one_frame(tiny_lm, tiny_tok, True, _Judge(lambda p: p in bare), max_new_tokens=2, n_harmful=3)
    assert [set(direct[g].values()) for g in ("in_domain", "in_frame_harmful", "off_domain", "direct_harmful")] == [
        {1.0}, {1.0}, {1.0}, {0.0}]


def test_measure_one_frame_with_the_string_judge_on_a_tiny_model(tiny_lm, tiny_tok):
    from coherentize.evaluate.judges import StringJudge

    got = measure_one_frame(tiny_lm, tiny_tok, chat=False, judge=StringJudge(), max_new_tokens=4, n_harmful=1)
    assert set(got) == GROUPS and all(v in (0.0, 1.0) for g in got.values() for v in g.values())
    assert len(got["off_domain"]) == len(narrow_sets.other_frames())


def test_measure_one_frame_needs_a_harmful_request():
    from coherentize.errors import CoherentizeError

    with pytest.raises(CoherentizeError, match="n_harmful"):
        narrow_probes.one_frame_prompts(0)
