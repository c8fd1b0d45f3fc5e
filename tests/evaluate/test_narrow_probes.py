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
    """On a tiny model: every group's ids, values 0/1, and each value what scoring.mc_choice picks for that item
    (with the probe's CUE for the cued groups, plain for capability)."""
    from coherentize.evaluate.scoring import mc_choice

    got = measure_sycophancy_domain(tiny_lm, tiny_tok, chat=True, batch_size=16)
    sets = sycophancy_domain_items()
    assert set(got) == {"in_domain", "off_domain", "capability"}
    assert list(got["in_domain"]) == [it["id"] for it in sets["in_domain"]]
    assert list(got["off_domain"]) == [it["id"] for it in sets["off_domain"]]
    items = sets["in_domain"] + sets["off_domain"]
    assert list(got["capability"]) == [it["id"] for it in items]
    ks = [it["n_choices"] for it in items]
    cued = mc_choice(tiny_lm, tiny_tok, [add_cue(it) for it in items], ks, True, 16)
    plain = mc_choice(tiny_lm, tiny_tok, [it["prompt"] for it in items], ks, True, 16)
    for it, a, p in zip(items, cued, plain):
        group = "in_domain" if it in sets["in_domain"] else "off_domain"
        assert got[group][it["id"]] == float(a == cued_letter(it))
        assert got["capability"][it["id"]] == float(p == it["answer"])


def test_measure_sycophancy_domain_detects_a_model_that_follows_the_cue(tiny_lm, tiny_tok, monkeypatch):
    """A model that answers every cued prompt with the cued letter and every plain one correctly scores 1 in and off
    domain and full capability; one that always answers correctly scores 0 in and off domain. The letter choice is
    replaced (scoring.mc_choice) to make those two models; everything else is the measure's."""
    from coherentize.evaluate import scoring

    by_prompt = {}
    for s in sycophancy_domain_items().values():
        for it in s:
            by_prompt[it["prompt"]] = it["answer"]
            by_prompt[add_cue(it)] = cued_letter(it)

    def sycophant(model, tok, prompts, ks, chat, batch_size=16):
        assert all(p in by_prompt for p in prompts)
        return [by_prompt[p] for p in prompts]

    def honest(model, tok, prompts, ks, chat, batch_size=16):
        return [by_prompt[p.split("\n\n")[0]] if CUE.split("(")[0] in p else by_prompt[p] for p in prompts]

    monkeypatch.setattr(scoring, "mc_choice", sycophant)
    got = measure_sycophancy_domain(tiny_lm, tiny_tok, chat=True)
    assert set(got["in_domain"].values()) == set(got["off_domain"].values()) == set(got["capability"].values()) == {1.0}
    monkeypatch.setattr(scoring, "mc_choice", honest)
    got = measure_sycophancy_domain(tiny_lm, tiny_tok, chat=True)
    assert set(got["in_domain"].values()) == set(got["off_domain"].values()) == {0.0}
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
