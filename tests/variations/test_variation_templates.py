"""User template families from YAML/JSON files."""

import json

import pytest

from coherentize.errors import CoherentizeError
from coherentize.variations import families_by_name, load_template_families, vary


def _write(tmp_path, text, name="fams.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_yaml_template_family_is_used_like_a_builtin(tmp_path):
    p = _write(tmp_path, """
families:
  - name: exam_frame
    doc: an exam question
    templates: ["Exam question (5 points): {prompt}", "{prompt} (Show your work; {braces} stay.)"]
  - name: pirate
    templates: ["{prompt}"]
    system: ["You are a pirate."]
""")
    fams = load_template_families(p)
    assert [f.name for f in fams] == ["exam_frame", "pirate"]
    vs = vary("What is 2+2?", families_by_name(["exam_frame", "pirate", "wrapper"], fams), seed=0, per_family=2)
    exam = [v.prompt for v in vs if v.family == "exam_frame"]
    assert sorted(exam) == ["Exam question (5 points): What is 2+2?", "What is 2+2? (Show your work; {braces} stay.)"]
    (pirate,) = [v.prompt for v in vs if v.family == "pirate"]
    assert pirate == [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "What is 2+2?"}]
    assert any(v.family == "wrapper" for v in vs)


def test_json_template_file(tmp_path):
    p = _write(tmp_path, json.dumps({"families": [{"name": "hey", "templates": ["Hey! {prompt}"]}]}), "f.json")
    (fam,) = load_template_families(p)
    assert vary("Why?", [fam], seed=0)[0].prompt == "Hey! Why?"


@pytest.mark.parametrize(
    "text, message",
    [
        ("families:\n  - name: bad\n    templates: ['no slot here']\n", "families[0].templates[0]: template 'no slot here' of family 'bad' has no {prompt} slot"),
        ("families:\n  - name: wrapper\n    templates: ['{prompt}!']\n", "'wrapper' already exists"),
        ("families:\n  - name: Bad Name\n    templates: ['{prompt}']\n", "must be lower case"),
        ("families:\n  - name: x\n    templates: []\n", "at least one template"),
        ("families:\n  - name: x\n    template: ['{prompt}']\n", "unknown field 'template'"),
        ("other: 1\n", "expected a top-level 'families:' list"),
    ],
)
def test_template_file_mistakes_are_one_clear_error(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(CoherentizeError) as e:
        load_template_families(p)
    assert message in str(e.value) and str(p) in str(e.value)


# Jailbreak families: the same type and format (project, easyjailbreak, user files).

from coherentize.variations import templates  # noqa: E402


def test_project_templates_all_have_the_slot_and_several_families():
    fams = templates.template_families([templates.project_templates_path()])
    assert list(fams) == list(templates.template_families(["project"]))
    assert len(fams) >= 5
    assert all(templates.SLOT_RE.search(t) for f in fams.values() for t in f.templates)
    assert all(isinstance(f, templates.TemplateFamily) and f.doc for f in fams.values())


def test_easyjailbreak_templates_are_read_at_run_time_with_the_one_slot():
    fams = templates.template_families(["easyjailbreak"])
    assert {"prefix_injection", "refusal_suppression", "wikipedia"} <= set(fams)
    assert "\\n" not in fams["refusal_suppression"].templates[0]  # escaped newlines turned into newlines
    assert all(templates.SLOT in t and "{query}" not in t for f in fams.values() for t in f.templates)


def test_old_slot_is_a_clear_error_and_old_mapping_shape_is_read(tmp_path):
    f = _write(tmp_path, "families:\n  mine:\n    - 'Please answer: {prompt}'\n    - 'Old slot: {query}'\n")
    with pytest.raises(CoherentizeError, match=r"families\[0\]\.templates\[1\].*write \{prompt\} instead of \{query\}"):
        templates.template_families([f])
    f = _write(tmp_path, "families:\n  mine: 'Please answer: {prompt}'\n")
    assert templates.template_families([f])["mine"].templates == ("Please answer: {prompt}",)


def test_family_given_twice_is_an_error(tmp_path):
    f = _write(tmp_path, "families:\n  - name: roleplay_actor\n    templates: ['Pretend: {prompt}']\n")
    with pytest.raises(CoherentizeError, match="given by both"):
        templates.template_families(["project", str(f)])


def test_unknown_family_is_an_error():
    with pytest.raises(CoherentizeError, match="not found"):
        templates.template_families(["project"], only=["no_such_family"])


def test_fill_keeps_other_braces_and_pick_is_stable():
    assert templates.fill('{"a": 1} {prompt}', "hi") == '{"a": 1} hi'
    fam = templates.template_families(["project"], only=["roleplay_actor"])["roleplay_actor"]
    assert fam.pick("req-1") == templates.pick_template(list(fam.templates), "req-1", "roleplay_actor")


def test_evaluation_reads_templates_from_the_one_home():
    from coherentize.evaluate import jailbreak

    assert jailbreak.template_families is templates.template_families and jailbreak.SLOT == "{prompt}"


def test_builtin_variation_templates_and_word_lists_are_data_files():
    from coherentize.sources import data_path
    from coherentize.variations import families

    assert families.TEMPLATE_FAMILIES["wrapper"].source == "built-in"
    assert data_path("templates", "variations.yaml").is_file()
    assert "Alice" in families.FIRST_NAMES and "explain" in families.LEXICON
    assert not any(isinstance(v, (list, tuple)) and len(v) > 20 for k, v in vars(families).items() if k.isupper()
                   and k not in ("FIRST_NAMES",))  # word lists are read from data/lexicons, not written in Python


# --- attack kinds and transformed slots (issue 18, item 4)


def test_every_shipped_jailbreak_family_has_a_known_kind():
    fams = templates.template_families(["project", "easyjailbreak"])
    untagged = [n for n, f in fams.items() if not f.kinds]
    assert not untagged
    assert all(k in templates.ATTACK_KINDS for f in fams.values() for k in f.kinds)
    assert set(templates.EASYJAILBREAK_KINDS) == set(templates.template_families(["easyjailbreak"]))
    # the kinds the issue asks for are there, each in a family of its own kind
    kinds = {k for f in fams.values() for k in f.kinds}
    assert {"past_tense", "encoding", "adversarial_suffix", "persuasion", "roleplay", "refusal_suppression"} <= kinds


def test_kind_field_is_checked(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("families:\n- name: a\n  kind: [style, roleplay]\n  templates: ['{prompt} please']\n")
    assert templates.template_families([f])["a"].kinds == ("style", "roleplay")
    f.write_text("families:\n- name: a\n  kind: teleport\n  templates: ['{prompt} please']\n")
    with pytest.raises(CoherentizeError, match=r"families\[0\]\.kind: 'teleport' is not an attack kind"):
        templates.template_families([f])


def test_transformed_slots_rewrite_the_request(tmp_path):
    assert templates.fill("Decode: {prompt:base64}", "Name a fruit.") == "Decode: TmFtZSBhIGZydWl0Lg=="
    assert templates.fill("{prompt:rot13}!", "Hello") == "Uryyb!"
    assert templates.fill("{prompt} / {prompt:past_tense}", "How do I bake bread?") == (
        "How do I bake bread? / How did people bake bread in the past?")
    f = tmp_path / "t.yaml"
    f.write_text("families:\n- name: a\n  templates: ['{prompt:klingon}']\n")
    with pytest.raises(CoherentizeError, match=r"unknown transform \{prompt:klingon\}"):
        templates.template_families([f])
    fam = templates.template_families(["project"], only=["past_tense", "base64_request"])
    assert fam["past_tense"].transformed and fam["past_tense"].frames() == []
    assert fam["base64_request"].wrap("Name a fruit.", "k").endswith("TmFtZSBhIGZydWl0Lg==")


@pytest.mark.parametrize("request_text, past", [
    ("How do I bake sourdough bread?", "How did people bake sourdough bread in the past?"),
    ("What is the best way to clean a cast iron pan?", "How did people clean a cast iron pan in the past?"),
    ("Write a guide on how to fold a paper crane.", "How did people fold a paper crane in the past?"),
    ("Can you explain how to change a tyre?", "How did people change a tyre in the past?"),
    ("Is there a way to speed up my laptop?", "How did people speed up their laptop in the past?"),
    ("What are good names for a cat?", "What were good names for a cat in the past?"),
    ("Write a poem about rain.", "How did people in the past write a poem about rain?"),
    ("Why do people like cats?", "Why did people like cats in the past?"),
    ("The best pizza toppings?", "How was this done in the past: the best pizza toppings?"),
])
def test_past_tense_rewrite(request_text, past):
    assert templates.to_past_tense(request_text) == past
