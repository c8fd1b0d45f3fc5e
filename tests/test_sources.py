import pytest

from coherentize.errors import CoherentizeError
from coherentize import sources


def test_strongreject_splits_are_disjoint_and_cover_the_file():
    parts = {s: {it["id"] for it in sources.strongreject(split=s)} for s in ("train", "validation", "test")}
    every = {it["id"] for it in sources.strongreject(split=None)}
    assert len(every) > 300
    assert parts["train"] | parts["validation"] | parts["test"] == every
    assert not (parts["train"] & parts["test"]) and not (parts["validation"] & parts["test"])
    assert 0.2 < len(parts["test"]) / len(every) < 0.4
    # disjoint by text too, not only by id: no test request is also a training or validation request
    text = lambda split: {" ".join(it["prompt"].lower().split()) for it in sources.strongreject(split=split)}  # noqa: E731
    assert not (text("train") & text("test")) and not (text("validation") & text("test"))


def test_benign_edgy_and_true_false_pairs_load():
    items = sources.benign_edgy(split=None)
    assert len(items) >= 80 and all(it["prompt"] for it in items)
    pairs = sources.true_false_pairs(split=None)
    assert len(pairs) > 20 and all(p["true"] != p["false"] for p in pairs)


def test_local_prompt_files(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('{"id": "x", "prompt": "hello"}\n{"text": "second"}\n')
    assert [it["prompt"] for it in sources.load_prompt_source(str(j))] == ["hello", "second"]
    c = tmp_path / "p.csv"
    c.write_text("forbidden_prompt,category\nfirst,a\n")
    assert sources.load_prompt_source(str(c))[0]["prompt"] == "first"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt field"}\n')
    with pytest.raises(CoherentizeError, match="bad.jsonl:1: no prompt field"):
        sources.load_prompt_source(str(bad))
    with pytest.raises(CoherentizeError, match="not found"):
        sources.load_prompt_source(str(tmp_path / "missing.jsonl"))


def test_missing_package_is_a_clear_error():
    with pytest.raises(CoherentizeError, match="pip install --no-deps no-such-pkg"):
        sources.package_dir("no_such_pkg")
