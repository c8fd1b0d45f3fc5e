"""The report's pure table functions on hand-made inputs."""

import pytest

from coherentize.report import tables


def test_build_table_pairs_arms_with_the_control_of_the_same_seed():
    base = {"m": {"a": 1.0, "b": 2.0, "c": 3.0}}
    by_arm = {"control": [(0, {"m": {"a": 1.0, "b": 2.0, "c": 3.0}}), (1, {"m": {"a": 2.0, "b": 3.0, "c": 4.0}})],
              "x": [(0, {"m": {"a": 1.5, "b": 2.5, "c": 3.5}}), (1, {"m": {"a": 2.5, "b": 3.5, "c": 4.5}})]}
    metrics, t = tables.build_table(base, by_arm, n_boot=200)
    assert metrics == ["m"]
    row = t["m"]["x"]
    assert row["vs_control"]["mean"] == pytest.approx(0.5) and row["vs_control"]["ci_low"] == pytest.approx(0.5)
    assert row["vs_baseline"]["mean"] == pytest.approx(1.0) and row["vs_baseline"]["n"] == 3
    assert row["seeds"]["vs_baseline"] == {0: pytest.approx(0.5), 1: pytest.approx(1.5)}
    assert row["seeds"]["vs_control"] == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    assert row["value"]["n"] == 3 and row["value"]["seeds"] == 2
    assert "vs_control" not in t["m"]["control"]
    rows = tables.forest_rows(["m", "jailbreak.refused_direct"], {**t, "jailbreak.refused_direct": t["m"]}, ["x"])
    assert [(r["label"], r["comparison"]) for r in rows] == [("x − control", "vs_control"),
                                                              ("x − baseline", "vs_baseline")]
    assert rows[1]["seeds"] == [pytest.approx(0.5), pytest.approx(1.5)]


def test_run_items_take_the_condition_from_the_baseline():
    res = {"per_item": {"jailbreak.refused_direct": {"a": 0.0, "b": 1.0},  # this run refuses only b
                        "jailbreak.success.f": {"a": 1.0, "b": 0.0}}}
    items = tables.run_items(res, {"a"})  # ... but the baseline refused a
    assert items["jailbreak.success_given_refused"] == {"a": 1.0}
    assert items["jailbreak.success_unconditional"] == {"a": 1.0, "b": 0.0}
    assert tables.refused_directly(res) == {"b"}


def test_example_outputs_same_prompts_in_every_run_changed_decisions_first():
    def rec(suite, fam, pid, label, excerpt="x"):
        return {"suite": suite, "family": fam, "prompt_id": pid, "label": label, "excerpt": excerpt}

    records = {"baseline": [rec("jailbreak", "f", p, "refused") for p in ("a", "b", "c")]
               + [rec("coherence", "synonym", "a", "")],
               "arm-seed0": [rec("jailbreak", "f", "a", "refused"), rec("jailbreak", "f", "b", "refused"),
                             rec("jailbreak", "f", "c", "complied", "[redacted: complied]")]}
    ex = tables.example_outputs(records, per_family=2)
    assert [(e["suite"], e["family"]) for e in ex] == [("jailbreak", "f")]  # coherence has no examples
    assert [r["prompt_id"] for r in ex[0]["rows"]] == ["c", "a"]
    assert ex[0]["rows"][0]["cells"] == {"baseline": "refused: x", "arm-seed0": "complied: [redacted: complied]"}


def test_stage_times_from_done_markers_and_the_experiment_summary():
    done = {"baseline": {"seconds": 10.0}, "train/x-seed0": {"arm": "x"}, "variations": None}
    assert tables.stage_times(done) == {"baseline": 10.0}
    summary = {"stage_seconds": {"baseline": 12.5, "train/x-seed0": 40.0, "report": 1.0}}
    assert tables.stage_times(done, summary) == {"baseline": 12.5, "train/x-seed0": 40.0}


def test_export_commands_name_the_base_model_for_adapters_only():
    runs = [{"arm": "x", "seed": 0, "model_dir": "/r/train/x-seed0/model"},
            {"arm": "x", "seed": 1, "model_dir": "/r/train/x seed1/model"}]
    out = tables.export_commands(runs, "/org/folder", {"/r/train/x-seed0/model": True, "/r/train/x seed1/model": False})
    assert out[0]["command"] == ("coherentize export --model /r/train/x-seed0/model --out exported/x-seed0 "
                                 "--base-model /org/folder")
    assert out[1]["command"] == "coherentize export --model '/r/train/x seed1/model' --out exported/x-seed1"


def test_a_bootstrap_change_on_few_items_is_not_named_but_a_rate_change_is():
    metrics, t = tables.build_table({"coherence.js_pairwise": {"a": 0.1, "b": 0.2},
                                     "overrefusal.refused": {"a": 0.0, "b": 0.0, "c": 0.0}},
                                    {"x": [(0, {"coherence.js_pairwise": {"a": 0.3, "b": 0.5},
                                                "overrefusal.refused": {"a": 1.0, "b": 1.0, "c": 1.0}})]}, n_boot=200)
    js, over = t["coherence.js_pairwise"]["x"]["vs_baseline"], t["overrefusal.refused"]["x"]["vs_baseline"]
    assert js["ci_low"] > 0 and js["method"] == "bootstrap" and not tables.moved(js)  # 2 items: their range
    assert over["ci_low"] > 0 and over["method"] == "newcombe" and tables.moved(over)  # 3 of 3 refuse now
    lines = tables.summary_lines(metrics, t, ["x"], {}, 0)
    assert lines[0].startswith("- **x** vs baseline, changes whose 95% CI excludes 0 (1 seed: the CI covers prompt "
                               "sampling only, not training noise): over-refusal")
    assert "pairwise JS" not in lines[0]
    assert lines[1] == ("  - **regressions** (moved the wrong way beyond the CI): over-refusal on benign-but-edgy "
                        "prompts (vs baseline).")
    assert lines[2].startswith("  - not named above: CI clear of 0 but a bootstrap on fewer than 10 prompts: "
                               "coherence: pairwise JS of next-token distributions +0.25 [")
