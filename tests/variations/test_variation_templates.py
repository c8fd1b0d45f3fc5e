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
        ("families:\n  - name: bad\n    templates: ['no slot here']\n", "families[0].templates[0]: template 'no slot here' has no {prompt} slot"),
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
