"""The shipped prompt sets and the prompt-file reader."""

import pytest

from coherentize.errors import CoherentizeError
from coherentize.variations.prompt_sets import PROMPT_SETS, load_prompt_set, read_prompts, resolve_input


@pytest.mark.parametrize("name", PROMPT_SETS)
def test_shipped_set_schema_and_documented_split(name):
    items = load_prompt_set(name)
    assert len(items) >= 30
    assert len({it.id for it in items}) == len(items)
    assert len({str(it.prompt).lower() for it in items}) == len(items)
    for i, it in enumerate(items):
        assert isinstance(it.prompt, str) and it.prompt.strip()
        assert it.tags["set"] == name
        assert it.tags["split"] == ("train" if i % 10 < 6 else "validation" if i % 10 < 8 else "test")
    assert {len(load_prompt_set(name, s)) for s in ("validation", "test")} == {len(items) // 5}


def test_edgy_benign_test_split_is_what_the_probe_reads():
    test = load_prompt_set("edgy_benign", split="test")
    assert len(test) == 8 and all(it.tags["split"] == "test" for it in test)
    cats = {it.tags["category"] for it in load_prompt_set("edgy_benign")}
    assert {"homonym", "figurative", "safe_target", "safety_info", "historical"} <= cats


def test_raw_text_prompts_are_continuations():
    assert any(it.prompt.startswith("Alice and Bob") for it in load_prompt_set("raw_text"))


def test_read_prompts_errors_and_defaults(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "Hi?"}\n{"id": "x", "prompt": [{"role": "user", "content": "Yo"}]}\n')
    a, b = read_prompts(p)
    assert a.id.startswith("p-") and b.prompt == [{"role": "user", "content": "Yo"}]
    p.write_text('{"id": "a", "prompt": "Hi"}\n{"id": "b", "text": "Hello"}\n')
    with pytest.raises(CoherentizeError, match=r"p.jsonl:2: unknown field\(s\) \['text'\]"):
        read_prompts(p)
    p.write_text('{"id": "a", "prompt": "Hi"}\n{"id": "b", "tags": {}}\n')
    with pytest.raises(CoherentizeError, match=r"p.jsonl:2: missing 'prompt'"):
        read_prompts(p)
    p.write_text('{"id": "a", "prompt": "Hi"}\n{"id": "a", "prompt": "Ho"}\n')
    with pytest.raises(CoherentizeError, match="duplicate id 'a'"):
        read_prompts(p)
    assert resolve_input("benign").name == "benign.jsonl"
    with pytest.raises(CoherentizeError, match="unknown prompt set"):
        load_prompt_set("nope")
