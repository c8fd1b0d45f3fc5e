import json

import pytest

from coherentize import narrow_sets
from coherentize.errors import CoherentizeError
from coherentize.narrow_sets import (
    ONE_FRAME_FRAME, ROLE_FRAMES, SYCOPHANCY_TOPIC, TOPIC_MC, TRAIN_CUES, one_frame_pairs, other_frames, read_frames,
    read_topic_items, sycophancy_domain_pairs, trained_frame,
)
from coherentize.sources import benign_edgy, data_path


# ---------------------------------------------------------------------------------------------------------------
# Sycophancy in one domain.


def test_sycophancy_pairs_same_seed_same_pairs_other_seed_other_pairs():
    a = sycophancy_domain_pairs(120, seed=3)
    assert a == sycophancy_domain_pairs(120, seed=3)
    assert [(p["prompt"], p["response"]) for p in a] != [(p["prompt"], p["response"])
                                                         for p in sycophancy_domain_pairs(120, seed=4)]


def test_sycophancy_pairs_agree_with_a_wrong_cue_on_trained_train_items_only():
    items = {it["id"]: it for it in read_topic_items()}
    pairs = sycophancy_domain_pairs(600, seed=0)
    assert len({(p["prompt"], p["response"]) for p in pairs}) == 600
    held = [it for it in items.values() if it["topic"] != SYCOPHANCY_TOPIC or it["split"] == "heldout"]
    for p in pairs:
        it = items[p["item"]]
        assert it["topic"] == SYCOPHANCY_TOPIC and it["split"] == "train"
        assert p["cued"] != it["answer"]
        assert p["response"].startswith(f"({p['cued']})")  # the first token the measure reads is the cued letter
        assert p["prompt"].startswith(narrow_sets.mc_prompt(it["question"], it["choices"]) + "\n\n")
        assert any(p["prompt"].endswith(c.format(letter=p["cued"])) for c in TRAIN_CUES)
        assert not any(h["question"] in p["prompt"] for h in held)
    assert {p["item"] for p in pairs} == {i for i, it in items.items()
                                          if it["topic"] == SYCOPHANCY_TOPIC and it["split"] == "train"}


def test_training_prompts_are_laid_out_as_the_sycophancy_probe_lays_out_its_items_but_never_with_its_cue():
    from coherentize.evaluate.sycophancy import CUE, from_mc

    for it in read_topic_items():
        assert narrow_sets.mc_prompt(it["question"], it["choices"]) == from_mc(it)["prompt"]
    cue_opening = CUE.split("(")[0]
    assert not [c for c in TRAIN_CUES if cue_opening in c]
    assert not [p for p in sycophancy_domain_pairs(300) if cue_opening in p["prompt"]]


def test_packaged_topic_items_are_balanced_and_unlike_the_general_probes_questions():
    items = read_topic_items()
    topics = {it["topic"] for it in items}
    assert SYCOPHANCY_TOPIC in topics and len(topics) >= 4
    held = [it for it in items if it["topic"] == SYCOPHANCY_TOPIC and it["split"] == "heldout"]
    assert len(held) >= 12 and len(items) - len(held) >= 60
    assert len({it["answer"] for it in items}) == 4  # the right option is not always in one place
    general = {json.loads(line)["question"] for name in ("mc_questions.jsonl", "capability_mc.jsonl")
               for line in data_path("eval", name).read_text(encoding="utf-8").splitlines() if line.strip()}
    assert not {it["question"] for it in items} & general


def test_too_few_or_too_many_sycophancy_pairs_is_one_clear_error():
    with pytest.raises(CoherentizeError, match="at least 1"):
        sycophancy_domain_pairs(0)
    with pytest.raises(CoherentizeError, match="distinct"):
        sycophancy_domain_pairs(10**5)


def _topic_lines():
    return TOPIC_MC.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("edit, message", [
    (lambda o: o.pop("question"), "'question' must be a non-empty string"),
    (lambda o: o.update(split="test"), "'split' must be one of"),
    (lambda o: o.update(answer="F"), "'answer' must be one of"),
    (lambda o: o.update(choices=["Lima", "Lima", "Cusco"]), "'choices' must be 2 to 8 distinct"),
    (lambda o: o.update(id="geography-00"), "appears twice"),
])
def test_a_bad_topic_item_file_is_one_error_naming_file_and_line(tmp_path, edit, message):
    lines = _topic_lines()
    obj = json.loads(lines[4])
    edit(obj)
    lines[4] = json.dumps(obj)
    bad = tmp_path / "topic_mc.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CoherentizeError) as e:
        sycophancy_domain_pairs(5, path=bad)
    assert str(e.value).startswith(f"{bad}:5: ") and message in str(e.value)


def test_a_topic_file_without_held_out_trained_items_is_an_error(tmp_path):
    lines = [line for line in _topic_lines()
             if not (json.loads(line)["topic"] == SYCOPHANCY_TOPIC and json.loads(line)["split"] == "heldout")]
    bad = tmp_path / "topic_mc.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CoherentizeError, match=rf"{bad}: no 'heldout' items of the trained topic"):
        sycophancy_domain_pairs(5, path=bad)


# ---------------------------------------------------------------------------------------------------------------
# Compliance inside one frame.


def test_one_frame_pairs_same_seed_same_pairs_other_seed_other_pairs():
    a = one_frame_pairs(100, seed=1)
    assert a == one_frame_pairs(100, seed=1)
    assert [p["prompt"] for p in a] != [p["prompt"] for p in one_frame_pairs(100, seed=2)]


def test_one_frame_pairs_are_train_requests_in_the_trained_frame_with_no_answer():
    frame = trained_frame()
    train = {it["id"]: it["prompt"] for it in benign_edgy(split="train")}
    held = [it["prompt"] for s in ("validation", "test") for it in benign_edgy(split=s)]
    pairs = one_frame_pairs(3 * len(train), seed=0)  # every distinct prompt
    assert len({p["prompt"] for p in pairs}) == len(pairs)
    for p in pairs:
        assert p["response"] is None
        assert p["answer_prompt"] == train[p["request"]]
        assert p["prompt"] == frame.templates[p["template"]].replace("{prompt}", p["answer_prompt"])
        assert p["answer_prompt"] not in held
    assert {p["request"] for p in pairs} == set(train)
    with pytest.raises(CoherentizeError, match="distinct prompts"):
        one_frame_pairs(3 * len(train) + 1)
    with pytest.raises(CoherentizeError, match="at least 1"):
        one_frame_pairs(0)


def test_frames_are_unlike_every_evaluation_jailbreak_family_and_unlike_each_other():
    """The overlap check the experiment runs before training (evaluate/overlap.check_frames, threshold 0.25): no frame
    of role_frames.yaml is close to a jailbreak family of the evaluation, and the evaluation-only frames are not
    close to the trained one."""
    from coherentize.evaluate.overlap import check_frames, family_frames
    from coherentize.variations.templates import template_families

    try:
        jail = template_families(["project", "easyjailbreak"])
    except CoherentizeError:
        jail = template_families(["project"])
    ours = family_frames(read_frames())
    assert set(ours) == {ONE_FRAME_FRAME, *other_frames()} and len(other_frames()) >= 3
    matches = check_frames(ours, family_frames(jail), where=str(ROLE_FRAMES))
    assert matches[0].score < 0.2
    check_frames({ONE_FRAME_FRAME: ours[ONE_FRAME_FRAME]}, {k: v for k, v in ours.items() if k != ONE_FRAME_FRAME})
    assert not set(ours) & set(jail)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace(f"name: {ONE_FRAME_FRAME}", "name: some_other_frame"), f"no family named '{ONE_FRAME_FRAME}'"),
    (lambda t: t.replace("  - \"You're Sam Reyes", "  - \"Second template {prompt}\"\n  - \"You're Sam Reyes"),
     "families[2] (radio_call_in).templates: an evaluation-only frame has exactly one template"),
    (lambda t: t.replace("Caller: {prompt}", "Caller: ..."), "families[2].templates[0]"),
])
def test_a_bad_frame_file_is_one_error_naming_file_and_field(tmp_path, edit, message):
    bad = tmp_path / "frames.yaml"
    bad.write_text(edit(ROLE_FRAMES.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(CoherentizeError) as e:
        one_frame_pairs(5, path=bad)
    assert str(e.value).startswith(str(bad)) and message in str(e.value)
