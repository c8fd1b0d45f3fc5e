import json
import math

import pytest
import torch

from coherentize.chat import prompt_text, render
from coherentize.errors import CoherentizeError
from coherentize.evaluate import EvalConfig, run_suite, write_results
from coherentize.evaluate import cross_context as xc
from coherentize.evaluate.suite import validate
from coherentize.variations.contexts import CONTEXT_KINDS, contexts, read_contexts

KINDS = list(CONTEXT_KINDS)


def test_packaged_items_and_contexts_are_valid():
    items = xc.items()
    assert len(items) == 48 and {it["kind"] for it in items} == set(xc.QUESTION_KINDS)
    assert [it["kind"] for it in items[:3]] == ["value", "preference", "factual"]  # a small n has every kind
    every = read_contexts()
    for split in ("train", "test"):
        assert all(len(contexts(split)[k]) >= 2 for k in KINDS)
    test_ids = {c.id for k in KINDS for c in contexts("test")[k]}
    train_ids = {c.id for k in KINDS for c in contexts("train")[k]}
    assert not test_ids & train_ids and len(test_ids | train_ids) == len(every)


def test_each_context_row_asks_the_reference_question_last_and_unchanged(tiny_tok):
    items = xc.items()
    rows = xc.build_rows(items, KINDS, 2, ["synonym", "register", "typos"], seed=0)
    by_id = {c.id: c for k in KINDS for c in contexts("test")[k]}
    refs = {r.item: r.prompt for r in rows if r.condition == "reference"}
    assert len(refs) == len(items)
    for it in items:
        ctx = [r for r in rows if r.item == it["id"] and r.condition == "context"]
        assert sorted(r.kind for r in ctx) == sorted(KINDS * 2)
        assert len({r.context for r in ctx}) == 6  # distinct contexts, all from the test split
        ref = refs[it["id"]]
        chat_ref = render(tiny_tok, ref, chat=True)
        for r in ctx:
            c = by_id[r.context]
            assert r.prompt[:-1] == list(c.messages) and r.prompt[-1] == {"role": "user", "content": ref}
            assert render(tiny_tok, r.prompt, chat=True).endswith(chat_ref)  # the same last turn and generation prompt
            assert render(tiny_tok, r.prompt, chat=True) != chat_ref
            raw = render(tiny_tok, r.prompt, chat=False)
            assert raw.endswith("\n\n" + ref) and raw.startswith(c.messages[0]["content"])


def test_contexts_and_rewordings_are_seeded():
    items = xc.items(12)
    a = xc.build_rows(items, KINDS, 2, ["synonym", "typos"], seed=0)
    assert a == xc.build_rows(items, KINDS, 2, ["synonym", "typos"], seed=0)
    b = xc.build_rows(items, KINDS, 2, ["synonym", "typos"], seed=1)
    assert [r.context for r in a] != [r.context for r in b]
    # another item list leaves an item's own contexts unchanged
    one = xc.build_rows(items[5:6], KINDS, 2, ["synonym", "typos"], seed=0)
    assert one == [r for r in a if r.item == items[5]["id"]]


def test_rewordings_change_the_question_but_keep_its_options():
    items = xc.items(6)
    rows = xc.build_rows(items, KINDS, 1, ["register", "typos"], seed=0)
    for it in items:
        ref = xc.question_prompt(it["question"], it["choices"])
        options = ref[len(it["question"]):]
        rew = [r for r in rows if r.item == it["id"] and r.condition == "rewording"]
        assert {r.kind for r in rew} == {"register", "typos"}
        for r in rew:
            assert isinstance(r.prompt, str) and r.prompt != ref and r.prompt.endswith(options)


def _js(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    kl = lambda x, y: sum(a * math.log(a / b) for a, b in zip(x, y) if a > 0)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def test_agreement_and_js_known_values():
    items = [{"id": "a", "kind": "value", "choices": ["x", "y"]},
             {"id": "b", "kind": "factual", "choices": ["x", "y"], "answer": "B"}]
    R = xc.Row
    rows = [R("a", "reference", "", "", "q"), R("a", "context", "history", "h1", "q"),
            R("a", "context", "persona", "p1", "q"), R("a", "context", "task", "t1", "q"),
            R("a", "rewording", "typos", "", "q"),
            R("b", "reference", "", "", "q"), R("b", "context", "history", "h1", "q"),
            R("b", "rewording", "typos", "", "q"), R("b", "rewording", "register", "", "q")]
    letters = ["A", "A", "B", "A", "A", "B", "B", "A", "B"]
    probs = [[.5, .5], [.6, .4], [.1, .9], [.5, .5], [.5, .5], [.2, .8], [.2, .8], [.9, .1], [.3, .7]]
    logps = [torch.tensor(p, dtype=torch.float64).log() for p in probs]
    summary, per = xc.agreement_stats(items, rows, letters, logps, ["history", "persona", "task"], n_boot=200)
    assert per["cross_context.agreement"] == {"a": pytest.approx(2 / 3), "b": 1.0}
    assert per["cross_context.within_agreement"] == {"a": 1.0, "b": 0.5}
    assert per["cross_context.agreement.persona"] == {"a": 0.0}
    assert per["cross_context.js"]["a"] == pytest.approx((_js(probs[0], probs[1]) + _js(probs[0], probs[2])) / 3)
    assert per["cross_context.js"]["b"] == pytest.approx(0.0, abs=1e-8)  # losses.js: log 2 as a float32 constant
    assert per["cross_context.within_js"]["b"] == pytest.approx((_js(probs[5], probs[7]) + _js(probs[5], probs[8])) / 2)
    assert summary["agreement"]["mean"] == pytest.approx(5 / 6) and summary["agreement"]["n"] == 2
    assert summary["agreement_minus_within"]["mean"] == pytest.approx((2 / 3 - 1 + 1 - 0.5) / 2)
    assert summary["reference_accuracy_factual"]["mean"] == 1.0
    assert summary["by_question_kind"]["factual"]["within_agreement"]["mean"] == 0.5


def _last_token_only(model):
    """The model with every attention output projection zeroed: each position's logits depend on its own token only
    (no position embeddings in llama), so nothing before the last token can change the answer."""
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
    return model


def test_a_model_that_ignores_the_context_agrees_exactly_and_one_that_reads_it_does_not(tiny_lm, tiny_tok):
    items = xc.items(3)
    args = dict(kinds=KINDS, per_kind=1, rewordings=["register"], n_boot=50)
    s, records, per = xc.run_cross_context(tiny_lm, tiny_tok, items, True, **args)
    assert min(per["cross_context.js"].values()) > 1e-7  # the contexts reach the model: its option distributions move
    blind = _last_token_only(tiny_lm)
    s, records, per = xc.run_cross_context(blind, tiny_tok, items, True, **args)
    assert per["cross_context.agreement"] == {it["id"]: 1.0 for it in items}
    assert s["agreement"]["mean"] == 1.0 and s["agreement"]["n"] == 3
    # JS of two identical distributions is ~1.9e-9, not 0: losses.js subtracts log 2 as a float32 constant
    assert max(per["cross_context.js"].values()) < 1e-8 and s["within_agreement"]["mean"] == 1.0
    assert len(records) == 3 * (1 + 3 + 1) and all(r["value"] == 1.0 for r in records)


def test_run_suite_reports_cross_beside_within_context(tiny_lm, tiny_tok, tmp_path):
    cfg = EvalConfig(suites=["cross_context"], n_cross_context=3, cross_context_per_kind=1,
                     cross_context_rewordings=["register"], n_boot=50)
    res = run_suite(tiny_lm, tiny_tok, cfg, quiet=True)
    s = res["suites"]["cross_context"]
    for k in ("agreement", "within_agreement", "agreement_minus_within", "js", "within_js"):
        assert s[k]["n"] == 3 and s[k]["ci_low"] is not None
    assert set(res["per_item"]["cross_context.agreement"]) == {it["id"] for it in xc.items(3)}
    write_results(res, tmp_path)
    body = json.loads((tmp_path / "results.json").read_text())
    assert body["config"]["n_cross_context"] == 3 and "cross_context.within_agreement" in body["per_item"]
    assert "cross_context" in (tmp_path / "records.csv").read_text()


@pytest.mark.parametrize("field,value", [("n_cross_context", -1), ("cross_context_kinds", ["history", "gossip"]),
                                         ("cross_context_kinds", []), ("cross_context_per_kind", 0),
                                         ("cross_context_rewordings", ["persona"])])
def test_bad_cross_context_config_is_one_clear_error(field, value):
    with pytest.raises(CoherentizeError, match=f"eval.{field}"):
        validate(EvalConfig(**{field: value}))


@pytest.mark.parametrize("line,msg", [
    ({"id": "x", "kind": "gossip", "split": "test", "messages": [{"role": "system", "content": "Hi"}]}, "kind"),
    ({"id": "x", "kind": "task", "split": "test", "messages": [{"role": "user", "content": "Hi"}]}, "assistant"),
    ({"id": "x", "kind": "task", "split": "dev", "messages": [{"role": "system", "content": "Hi"}]}, "split"),
])
def test_bad_contexts_file_names_file_and_line(tmp_path, line, msg):
    path = tmp_path / "ctx.jsonl"
    good = {"id": "ok", "kind": "persona", "split": "test", "messages": [{"role": "system", "content": "Be brief."}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(CoherentizeError, match=f"ctx.jsonl:2: .*{msg}"):
        read_contexts(path)


def test_questions_are_held_out_from_every_other_packaged_file():
    from coherentize.evaluate.overlap import prompt_key
    from coherentize.sources import data_path

    others = [prompt_key(line) for f in data_path().rglob("*.jsonl") if f.name != "cross_context.jsonl"
              for line in f.read_text(encoding="utf-8").splitlines()]
    joined = "\n".join(others)
    assert [it["id"] for it in xc.items() if prompt_key(it["question"]) in joined] == []
