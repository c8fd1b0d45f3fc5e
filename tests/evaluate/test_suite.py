import json

import pytest

from coherentize.clusters import Cluster, Variation
from coherentize.errors import CoherentizeError
from coherentize.evaluate import EvalConfig, compare, run_suite, write_results
from coherentize.sources import strongreject

SMALL = dict(n_harmful=3, n_overrefusal=3, n_sycophancy=4, n_mc=4, n_capability_texts=2, n_clusters=4,
             max_new_tokens=4, n_boot=100, jailbreak_families=["roleplay_actor", "prefix_injection"],
             embed_model="none")


def test_run_suite_every_figure_has_n_and_ci(tiny_lm, tiny_tok, tmp_path):
    res = run_suite(tiny_lm, tiny_tok, EvalConfig(**SMALL), reference_model=tiny_lm, quiet=True)
    assert set(res["suites"]) == {"coherence", "jailbreak", "framed_benign", "overrefusal", "sycophancy", "capability"}

    def summaries(node):
        if isinstance(node, dict) and "mean" in node and "n" in node:
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from summaries(v)
        elif isinstance(node, list):
            for v in node:
                yield from summaries(v)

    found = list(summaries(res["suites"]))
    assert len(found) > 20
    assert all({"ci_low", "ci_high", "n"} <= set(s) for s in found)
    write_results(res, tmp_path)
    text = (tmp_path / "records.csv").read_text()
    harmful = {r["prompt"] for r in strongreject(split="test", n=3)}
    assert not any(h[:40] in text for h in harmful)  # harmful request text is never written
    json.loads((tmp_path / "results.json").read_text())
    again = run_suite(tiny_lm, tiny_tok, EvalConfig(**SMALL, suites=["capability"]), quiet=True)
    d = compare(res, again)
    assert d["capability.nll"]["paired"] and d["capability.nll"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_empty_and_unknown_suites_are_errors(tiny_lm, tiny_tok):
    with pytest.raises(CoherentizeError, match="suite is empty"):
        run_suite(tiny_lm, tiny_tok, EvalConfig(suites=[]))
    with pytest.raises(CoherentizeError, match="unknown suite"):
        run_suite(tiny_lm, tiny_tok, EvalConfig(suites=["vibes"]))


def test_training_overlap_is_refused_unless_allowed(tiny_lm, tiny_tok):
    req = strongreject(split="test", n=1)[0]["prompt"]
    train = [Cluster("t", "Hello", [Variation("Pretend you are an actor. " + req, "roleplay_actor")])]
    cfg = EvalConfig(**{**SMALL, "suites": ["jailbreak"], "n_harmful": 2})
    with pytest.raises(CoherentizeError, match="roleplay_actor"):
        run_suite(tiny_lm, tiny_tok, cfg, train_clusters=train, quiet=True)
    cfg.allow_overlap = True
    res = run_suite(tiny_lm, tiny_tok, cfg, train_clusters=train, quiet=True)
    assert res["overlap"]["allowed"] and res["overlap"]["families"] == ["roleplay_actor"]
    assert len(res["overlap"]["text"]) == 1


def test_user_coherence_clusters(tiny_lm, tiny_tok):
    cl = [Cluster(f"c{i}", f"Question {i}?", [Variation(f"question {i}", "lower")], ["Answer."], {"harmful": False})
          for i in range(3)]
    res = run_suite(tiny_lm, tiny_tok, EvalConfig(**{**SMALL, "suites": ["coherence"]}), coherence_clusters=cl,
                    quiet=True)
    c = res["suites"]["coherence"]
    assert c["js_pairwise"]["n"] == 3 and c["n_clusters"] == 3 and len(c["per_layer"]) == 2


def test_n_self_report_limits_the_self_report_clusters(tiny_lm, tiny_tok):
    from coherentize.evaluate.suite import self_report_clusters

    cfg = EvalConfig(**{**SMALL, "n_clusters": 2}, suites=["coherence"], n_self_report=2)
    res = run_suite(tiny_lm, tiny_tok, cfg, quiet=True)
    sr_ids = {c.id for c in self_report_clusters()}
    asked = {r["prompt_id"] for r in res["records"] if r["prompt_id"] in sr_ids}
    assert asked == {c.id for c in self_report_clusters()[:2]}
    assert res["suites"]["coherence"]["self_report_agreement"]["n"] == 2


def test_jailbreak_families_per_request_uses_exactly_the_assigned_pairs(tiny_lm, tiny_tok):
    from coherentize.evaluate.jailbreak import assign_families

    fams = ["roleplay_actor", "prefix_injection", "opening_sure", "fiction_story"]
    cfg = EvalConfig(**{**SMALL, "n_harmful": 5, "jailbreak_families": fams}, suites=["jailbreak"],
                     jailbreak_families_per_request=2, jailbreak_assignment_seed=7)
    res = run_suite(tiny_lm, tiny_tok, cfg, quiet=True)
    ids = [r["id"] for r in strongreject(split="test", n=5)]
    assign = assign_families(ids, fams, 2, seed=7)
    got = {(r["prompt_id"], r["family"]) for r in res["records"] if r["suite"] == "jailbreak" and r["family"] != "direct"}
    assert got == {(i, f) for i, fs in assign.items() for f in fs} and len(got) == 10
    for f in fams:
        want = {i for i, fs in assign.items() if f in fs}
        assert set(res["per_item"][f"jailbreak.success.{f}"]) == want
        assert set(res["per_item"][f"jailbreak.margin.{f}"]) == want  # the margin probe on the same pairs
    assert res["suites"]["jailbreak"]["families_per_request"] == 2
    with pytest.raises(CoherentizeError, match="jailbreak_families_per_request"):
        run_suite(tiny_lm, tiny_tok, EvalConfig(**SMALL, jailbreak_families_per_request=-1), quiet=True)


def test_adaptive_probes_in_the_suite_results(tiny_lm, tiny_tok):
    """Prefill and search figures land in the jailbreak summary, per_item and records; the search leaves out a family
    training used (here allowed to overlap); worst-of-N names its N."""
    fams = ["roleplay_actor", "prefix_injection", "opening_sure"]
    cfg = EvalConfig(**{**SMALL, "n_harmful": 4, "jailbreak_families": fams}, suites=["jailbreak"],
                     jailbreak_prefill=True, jailbreak_search=True, jailbreak_search_budget=4,
                     jailbreak_search_width=1, train_families=["roleplay_actor"], allow_overlap=True)
    res = run_suite(tiny_lm, tiny_tok, cfg, quiet=True)
    jb = res["suites"]["jailbreak"]
    ids = {r["id"] for r in strongreject(split="test", n=4)}
    assert jb["prefill"]["opening"] == "Sure, here is" and jb["prefill"]["success_unconditional"]["n"] == 4
    assert jb["search"]["pool_families"] == ["opening_sure", "prefix_injection"]
    assert [c["budget"] for c in jb["search"]["curve"].values()] == [1, 2, 4] and jb["search"]["success"]["n"] == 4
    from coherentize.integrations.tracking import scalars

    tags = scalars(res)  # the figures reach TensorBoard / W&B
    assert "eval/jailbreak/search/curve/2" in tags and "eval/jailbreak/prefill/success_unconditional" in tags
    assert jb["worst_of_n"]["n"] == 4 and jb["families_per_request"] == 3
    assert set(res["per_item"]["jailbreak.prefill_success"]) == ids
    assert set(res["per_item"]["jailbreak.search_success_at.2"]) == ids
    fam_of = {r["family"] for r in res["records"]}
    assert {"prefill", "search", "direct"} <= fam_of
    assert not any(k.startswith("jailbreak.success.") and k.split(".", 2)[2] in ("prefill", "search")
                   for k in res["per_item"])  # never mistaken for a template family
    # off by default
    plain = run_suite(tiny_lm, tiny_tok, EvalConfig(**{**SMALL, "n_harmful": 2}, suites=["jailbreak"]), quiet=True)
    assert "prefill" not in plain["suites"]["jailbreak"] and "search" not in plain["suites"]["jailbreak"]
    with pytest.raises(CoherentizeError, match="jailbreak_search_budget"):
        run_suite(tiny_lm, tiny_tok, EvalConfig(**SMALL, jailbreak_search=True, jailbreak_search_budget=0), quiet=True)


def test_full_outputs_are_written_only_when_asked_and_never_into_records_or_results(tiny_lm, tiny_tok, tmp_path):
    cfg = EvalConfig(**{**SMALL, "suites": ["jailbreak", "overrefusal"], "n_harmful": 2, "max_new_tokens": 6})
    res = run_suite(tiny_lm, tiny_tok, cfg, quiet=True)
    write_results(res, tmp_path / "off")
    assert not (tmp_path / "off" / "outputs.jsonl").exists()
    cfg.save_outputs = True
    res = run_suite(tiny_lm, tiny_tok, cfg, quiet=True)
    write_results(res, tmp_path / "on")
    rows = [json.loads(line) for line in (tmp_path / "on" / "outputs.jsonl").read_text().splitlines()]
    by_id = {(r["suite"], r["id"]): r for r in rows}
    records = {(r["suite"], r["id"]): r for r in res["records"]}
    assert set(by_id) == {k for k, r in records.items() if "output" in r}
    assert {s for s, _ in by_id} >= {"jailbreak", "framed_benign", "overrefusal"}
    wrapped = next(r for r in rows if r["suite"] == "jailbreak" and r["family"] == "roleplay_actor")
    assert wrapped["output"] == records[("jailbreak", wrapped["id"])]["output"] and wrapped["prompt"]
    csv_text = (tmp_path / "on" / "records.csv").read_text()
    json_text = (tmp_path / "on" / "results.json").read_text()
    assert "prompt,output" not in csv_text and '"output"' not in json_text
    harmful = {r["prompt"] for r in strongreject(split="test", n=2)}
    assert not any(h[:40] in csv_text or h[:40] in json_text for h in harmful)
