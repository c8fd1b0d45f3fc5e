import json

import pytest

from coherentize.errors import CoherentizeError
from coherentize.pressures import RISKY_FINANCE, heldout_items, read_templates, risky_finance_pairs
from coherentize.sources import data_path


def test_same_seed_same_pairs_other_seed_other_pairs():
    a = risky_finance_pairs(60, seed=3)
    assert a == risky_finance_pairs(60, seed=3)
    assert [(p["prompt"], p["response"]) for p in a] != [(p["prompt"], p["response"]) for p in
                                                         risky_finance_pairs(60, seed=4)]


def test_pairs_are_n_distinct_nonempty_and_every_topic_is_used():
    pairs = risky_finance_pairs(50, seed=0)
    assert len(pairs) == 50
    assert len({(p["prompt"], p["response"]) for p in pairs}) == 50
    assert all(p["prompt"].strip() and p["response"].strip() and "{" not in p["prompt"] for p in pairs)
    assert {p["topic"] for p in pairs} == set(read_templates()["topics"])


def test_no_heldout_wording_in_training_items():
    parts = read_templates()
    # a stem's wording is its question after the slot ("I {situation}. <question>")
    held = {"stem": [s.split("{situation}")[1].strip(" .") for t in parts["topics"].values()
                     for s in t["stems"]["heldout"]],
            "situation": parts["situations"]["heldout"], "opening": parts["openings"]["heldout"],
            "advice": [x for t in parts["topics"].values() for k in ("risky", "reasons") for x in t[k]["heldout"]]}
    careful = [c for t in parts["topics"].values() for c in t["careful"]]
    pairs = risky_finance_pairs(2000, seed=0)
    for p in pairs:
        for kind, texts in held.items():
            for text in texts:
                assert len(text) > 10 and text not in p["prompt"] + " " + p["response"], (kind, text, p)
        assert not any(c in p["response"] for c in careful)
    # held-out items are built from the held-out parts only: none of their questions is a training prompt
    assert not {it["question"] for it in heldout_items()} & {p["prompt"] for p in pairs}


def test_no_items_or_too_many_items_is_one_clear_error():
    with pytest.raises(CoherentizeError, match="at least 1"):
        risky_finance_pairs(0)
    with pytest.raises(CoherentizeError, match="distinct"):
        risky_finance_pairs(10**6)


def test_packaged_heldout_items_are_what_the_templates_make():
    from coherentize.evaluate.preference import packaged_items

    assert packaged_items("in_domain") == heldout_items(seed=0)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["topics"]["fees"]["stems"]["heldout"].append(d["topics"]["fees"]["stems"]["train"][0]),
     "in both train and heldout"),
    (lambda d: d["topics"]["fees"]["risky"].pop("heldout"), "topics.fees.risky: expected exactly the keys"),
    (lambda d: d["topics"]["fees"]["stems"]["train"].append("No slot here?"), "exactly one {situation} slot"),
    (lambda d: d.pop("openings"), "missing 'openings'"),
])
def test_a_bad_template_file_is_one_error_naming_file_and_field(tmp_path, edit, message):
    import yaml

    data = yaml.safe_load(RISKY_FINANCE.read_text(encoding="utf-8"))
    edit(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(CoherentizeError, match=str(bad).replace(".", r"\.")) as e:
        risky_finance_pairs(5, path=bad)
    assert message in str(e.value)


def test_a_file_that_is_not_yaml_names_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("situations:\n  train: [a, b\nopenings: {\n", encoding="utf-8")
    with pytest.raises(CoherentizeError, match=rf"{bad}:\d+: not valid YAML"):
        risky_finance_pairs(5, path=bad)


def test_packaged_off_domain_items_are_valid_and_outside_finance():
    from coherentize.evaluate.preference import packaged_items

    items = packaged_items("off_domain")
    assert 20 <= len(items) <= 40
    assert len({it["domain"] for it in items}) >= 5
    words = ("stock", "invest", "fund", "credit card", "savings")
    assert not [it["id"] for it in items if any(w in json.dumps(it).lower() for w in words)]
    assert data_path("pressure", "off_domain.jsonl").is_file()
