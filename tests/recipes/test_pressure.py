"""Narrow pressures (recipes/pressure.py): the conditions and their training objectives, the spread ratio's interval,
config errors before any model time, and the whole shape on a tiny model (every arm-seed gets the narrow fine-tune,
the defended arm each defence; measures before and after; pressure.json, pressure_items.csv and the report section)."""

import csv
import json
import re

import numpy as np
import pytest

from coherentize.errors import CoherentizeError
from coherentize.evaluate import stats
from coherentize.recipes import pressure
from coherentize.recipes.experiment import run_experiment, validate
from coherentize.recipes.pressure import PressureConfig
from coherentize.report import pressure as pressure_report

from tests.recipes.test_experiment import tiny_cfg


def test_conditions_every_arm_undefended_then_the_defended_arm_with_each_defence():
    p = PressureConfig(kinds=["risky_finance"], defences=["kl_leash", "interleaved"])
    assert pressure.conditions(p, ["control", "output-kl"]) == [
        ("control", "none"), ("output-kl", "none"), ("control", "kl_leash"), ("control", "interleaved")]
    assert [pressure.condition_name(a, d) for a, d in pressure.conditions(p, ["control"])] == [
        "control", "control+kl_leash", "control+interleaved"]


def test_each_defence_sets_its_own_objective_over_plain_sft():
    p = PressureConfig(kinds=["risky_finance"], kl_leash_weight=2.0, l2_weight=0.5, interleave_weight=3.0,
                       train={"max_steps": 5, "learning_rate": 1e-3})
    plain = pressure.train_args(p, "none", 7)
    assert (plain.bct_weight, plain.output_weight, plain.act_weight, plain.leash_weight) == (1.0, 0.0, 0.0, 0.0)
    assert (plain.max_steps, plain.learning_rate, plain.seed, plain.data_seed) == (5, 1e-3, 7, 7)
    leash = pressure.train_args(p, "kl_leash", 0)
    assert (leash.leash_weight, leash.leash_fraction, leash.act_weight) == (2.0, 1.0, 0.0)
    l2 = pressure.train_args(p, "l2_residual", 0)
    assert (l2.act_weight, l2.target_model, l2.leash_weight) == (0.5, "original", 0.0)
    assert "response" in l2.act_sites
    inter = pressure.train_args(p, "interleaved", 0)
    # targets from the current model: on the pressure items (anchor == variant) the consistency terms are zero
    assert (inter.output_weight, inter.bct_weight, inter.target_model, inter.leash_weight) == (3.0, 1.0, "current", 0.0)


def test_a_pressure_of_its_own_dose_overrides_the_shared_training_fields_for_that_pressure_only():
    p = PressureConfig(kinds=["risky_finance", "sycophancy_domain"], train={"max_steps": 5, "learning_rate": 2e-4},
                       train_by_kind={"sycophancy_domain": {"learning_rate": 2e-5}})
    finance, syco = (pressure.train_args(p, "kl_leash", 0, k) for k in p.kinds)
    assert (finance.max_steps, finance.learning_rate) == (5, 2e-4)
    assert (syco.max_steps, syco.learning_rate, syco.leash_weight) == (5, 2e-5, 1.0)


def test_interleaving_scales_the_steps_so_the_pressure_items_are_seen_as_often():
    from coherentize.clusters import Cluster, Variation

    args = pressure.train_args(PressureConfig(kinds=["risky_finance"], train={"max_steps": 10}), "interleaved", 0)
    assert args.members_per_cluster == 2  # the narrow fine-tune's default: anchor + 1 variant per example
    extra = [Cluster(f"c{i}", "q", [Variation(f"v{j}", "synonym") for j in range(3)]) for i in range(4)]
    assert pressure.interleaved_steps(args, 12, extra).max_steps == 20  # (12 + 4 * 3) / 12 * 10


def test_pressure_clusters_train_the_response_on_the_prompt_alone():
    cs = pressure.pressure_clusters([{"id": "a", "prompt": "Q?", "response": "R."},
                                     {"id": "b", "prompt": "Frame: q2", "answer_prompt": "q2", "response": None}],
                                    answers={"b": "A2."})
    assert [(c.anchor, [v.prompt for v in c.variations], c.continuations) for c in cs] == [
        ("Q?", ["Q?"], ["R."]), ("Frame: q2", ["Frame: q2"], ["A2."])]
    with pytest.raises(CoherentizeError, match="'b': no response"):
        pressure.pressure_clusters([{"id": "b", "prompt": "x", "response": None}])


def test_ratio_seeds_is_the_ratio_of_pooled_means_and_widens_with_seed_noise():
    rng = np.random.default_rng(0)
    den = [{f"i{k}": 1.0 + rng.normal(0, 0.1) for k in range(30)} for _ in range(3)]
    num = [{f"o{k}": 0.5 + rng.normal(0, 0.1) for k in range(20)} for _ in range(3)]
    r = stats.ratio_seeds(num, den, n_boot=500)
    pooled = np.mean([v for d in num for v in d.values()]) / np.mean([v for d in den for v in d.values()])
    assert r["ratio"] == pytest.approx(pooled) and r["ci_low"] < r["ratio"] < r["ci_high"]
    assert r["denominator_excludes_zero"] and r["seeds"] == 3 and len(r["per_seed"]) == 3
    shifted = [{k: v + s for k, v in d.items()} for s, d in zip((-0.3, 0.0, 0.3), num)]  # seeds disagree
    w = stats.ratio_seeds(shifted, den, n_boot=500)
    assert (w["ci_high"] - w["ci_low"]) > 2 * (r["ci_high"] - r["ci_low"])
    flat = stats.ratio_seeds(num, [{k: rng.normal(0, 1) for k in d} for d in den], n_boot=500)
    assert not flat["denominator_excludes_zero"]
    with pytest.raises(ValueError, match="one numerator and one denominator per seed"):
        stats.ratio_seeds(num, den[:2])


def test_ratio_difference_is_paired_on_seeds_and_items():
    rng = np.random.default_rng(0)
    # each seed and item has its own offset that both conditions share: the paired interval cancels it
    den_ref = [{f"i{k}": 1.0 + rng.normal(0, 0.3) for k in range(30)} for _ in range(4)]
    num_ref = [{f"o{k}": 0.8 + s * 0.2 + rng.normal(0, 0.3) for k in range(20)} for s in range(4)]
    r = stats.ratio_difference_seeds(num_ref, den_ref, num_ref, den_ref, n_boot=300)
    assert r["difference"] == 0 and r["ci_low"] == r["ci_high"] == 0 and r["per_seed"] == [0.0] * 4
    # the same condition with its off-domain change halved on every item: the ratio halves, clear of 0
    half = [{k: v / 2 for k, v in d.items()} for d in num_ref]
    d = stats.ratio_difference_seeds(num_ref, den_ref, half, den_ref, n_boot=300)
    own, ref = stats.ratio_seeds(half, den_ref, n_boot=10), stats.ratio_seeds(num_ref, den_ref, n_boot=10)
    assert d["difference"] == pytest.approx(own["ratio"] - ref["ratio"]) and d["ci_high"] < 0
    unpaired_width = (own_w := stats.ratio_seeds(half, den_ref, n_boot=300))["ci_high"] - own_w["ci_low"]
    assert d["ci_high"] - d["ci_low"] < unpaired_width  # the shared seed and item noise cancels
    assert d["per_seed"] == pytest.approx([o - r for o, r in zip(own["per_seed"], ref["per_seed"])])
    with pytest.raises(ValueError, match="one {item: value} per seed"):
        stats.ratio_difference_seeds(num_ref, den_ref, half[:2], den_ref)


@pytest.mark.parametrize("sets, message", [
    (["pressure.kinds=[risky_finance,brainwash]"], "pressure.kinds: unknown pressure 'brainwash'"),
    (["pressure.kinds=[risky_finance]", "pressure.defences=[kl_leash,prayer]"], "unknown defence 'prayer'"),
    (["pressure.kinds=[risky_finance]", "pressure.defended_arm=bct"], "pressure.defended_arm: 'bct' is not one"),
    (["pressure.kinds=[risky_finance]", "pressure.n_train=0"], "pressure.n_train: must be an integer >= 1"),
    (["pressure.kinds=[risky_finance]", "pressure.train={max_stepz: 3}"], "unknown training field 'max_stepz'"),
    (["pressure.kinds=[risky_finance]", "pressure.train_by_kind={sycophancy_domian: {learning_rate: 1.0e-5}}"],
     "pressure.train_by_kind: 'sycophancy_domian' is not a pressure"),
    (["pressure.kinds=[risky_finance]", "pressure.train_by_kind={risky_finance: {learnig_rate: 1.0e-5}}"],
     "pressure.train_by_kind.risky_finance: unknown training field 'learnig_rate'"),
    (["pressure.kinds=[risky_finance]", "pressure.train_by_kind={sycophancy_domain: {learning_rate: fast}}"],
     "pressure.train_by_kind.sycophancy_domain"),
    (["pressure.kinds=[risky_finance]", "pressure.train_by_kind={risky_finance: 3}"],
     "pressure.train_by_kind.risky_finance: must map training fields"),
])
def test_config_mistakes_are_one_error_naming_the_field(tiny_folder, tmp_path, sets, message):
    with pytest.raises(CoherentizeError, match=message):
        validate(tiny_cfg(tiny_folder, tmp_path / "x", *sets))


def test_a_dose_for_a_pressure_left_out_of_kinds_is_allowed(tiny_folder, tmp_path):
    """`--set pressure.kinds=[risky_finance]` on a config that doses sycophancy_domain of its own runs."""
    validate(tiny_cfg(tiny_folder, tmp_path / "x", "pressure.kinds=[risky_finance]",
                      "pressure.train_by_kind={sycophancy_domain: {learning_rate: 1.0e-5}}"))


def test_the_pressure_shape_end_to_end_on_a_tiny_model(tiny_folder, tmp_path):
    out = tmp_path / "exp"
    cfg = tiny_cfg(tiny_folder, out, "arms=[control,output-kl]", "eval.suites=[coherence]", "seeds=[0,1]",
                   "pressure.kinds=[risky_finance]", "pressure.n_train=8", "pressure.defences=[kl_leash,interleaved]",
                   "pressure.train={max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.05}")
    report = run_experiment(cfg, log=lambda *a: None)
    summary = json.loads((out / "pressure.json").read_text())["risky_finance"]
    assert list(summary) == ["control", "output-kl", "control+kl_leash", "control+interleaved"]
    for cond, c in summary.items():
        assert c["seeds"] == [0, 1] and set(c["sets"]) == {"in_domain", "off_domain"}
        ins = c["sets"]["in_domain"]
        assert ins["change"]["n"] == 40 and ins["change"]["seeds"] == 2
        assert ins["before"]["mean"] + ins["change"]["mean"] == pytest.approx(ins["after"]["mean"])
        assert c["spread_ratio"]["ratio"] == pytest.approx(
            c["sets"]["off_domain"]["change"]["mean"] / ins["change"]["mean"])
        assert ("change_vs_undefended" in ins) == (cond != "control")
    # the defences share the control's start model, so their before values are the control's
    assert summary["control+kl_leash"]["sets"]["in_domain"]["before"] == summary["control"]["sets"]["in_domain"]["before"]
    # the narrow fine-tune moved the model (a real training ran): after differs from before
    assert summary["control"]["sets"]["in_domain"]["change"]["mean"] != 0
    rows = list(csv.DictReader((out / "pressure_items.csv").open()))
    # 4 conditions x 2 seeds x (before, after) x (40 in-domain + 30 off-domain items)
    assert len(rows) == 4 * 2 * 2 * 70 and {r["when"] for r in rows} == {"before", "after"}
    text = report.read_text()
    assert "## Narrow pressures" in text and "| control, KL leash to the start model | 2 |" in text
    dose = "Narrow fine-tune: 8 items, 2 steps of batch 4, learning rate 0.05 (constant)."
    assert dose in text
    # the per-item measures travel with the results data, and the committed section is regenerated from them alone
    from coherentize.report import data, section

    folder = data.read(out / "data")
    assert pressure_report.summarize(folder["pressure"], 50) == pressure_report.summarize(
        pressure_report.read_items(out / "pressure_items.csv"), 50)
    rows_md = [line for line in text.splitlines() if line.startswith("| control, KL leash")]
    assert rows_md[0] in section.section_markdown(folder, "cw") and dose in section.section_markdown(folder, "cw")
    # a re-run reuses every pressure stage
    logs = []
    run_experiment(cfg, log=logs.append)
    assert not any(m.startswith("== stage pressure") for m in logs)
    # the free-form answers of every start and fine-tuned model, read for misalignment, join the section's measures
    from coherentize.recipes.pressure_audit import sample_pressure, score_pressure

    sheet = sample_pressure(out, tmp_path / "em" / "sheet.jsonl", reading=tmp_path / "em" / "reading.md",
                            max_new_tokens=3, log=lambda *a: None)
    # (2 arms x 2 seeds start models) + (4 conditions x 2 seeds fine-tuned), 30 off-domain questions each
    assert len(sheet) == (2 * 2 + 4 * 2) * 30 and len({r["sheet_id"] for r in sheet}) == len(sheet)
    reading = (tmp_path / "em" / "reading.md").read_text()
    assert "control" not in reading and "seed" not in reading and reading.count("\n## a") == len(sheet)
    for reader in ("r1", "r2"):  # both readers call exactly the control's fine-tuned answers misaligned
        with (tmp_path / "em" / f"{reader}.csv").open("w") as f:
            f.write("sheet_id,misaligned,coherent\n" + "".join(
                f"{r['sheet_id']},{int(r['condition'] == 'control' and r['when'] == 'after')},1\n" for r in sheet))
    score_pressure(tmp_path / "em" / "sheet.jsonl", [tmp_path / "em" / "r1.csv", tmp_path / "em" / "r2.csv"],
                   out / "data" / "misalignment_audit.csv")
    assert "answer" not in (out / "data" / "misalignment_audit.csv").read_text().split("\n")[1]
    md = section.section_markdown(data.read(out / "data"), "cw")
    row = next(line for line in md.splitlines() if line.startswith("| control |") and "→" in line)
    assert row.startswith("| control | +0.000 [+0.000, ") and " → +1.000 [" in row  # judged_misaligned: 0 → 1
    kl_row = next(line for line in md.splitlines() if line.startswith("| control+kl_leash |") and "→" in line)
    assert "; -1.000" in kl_row  # its change minus the undefended control's
    assert "2 reader(s) (r1, r2)" in md and "misaligned 100.0%" in md
    # a dose of its own for the pressure re-trains (and re-measures) only what it changes
    logs = []
    dosed = tiny_cfg(tiny_folder, out, "arms=[control,output-kl]", "eval.suites=[coherence]", "seeds=[0,1]",
                     "pressure.kinds=[risky_finance]", "pressure.n_train=8", "pressure.defences=[kl_leash,interleaved]",
                     "pressure.train={max_steps: 2, per_device_train_batch_size: 4, learning_rate: 0.05}",
                     "pressure.train_by_kind={risky_finance: {learning_rate: 0.04}}")
    report = run_experiment(dosed, log=logs.append)
    assert "learning rate 0.04 (constant)" in report.read_text()
    rerun = {m.split()[2] for m in logs if m.startswith("== stage pressure")}
    assert {n.split("/")[1].rsplit("-seed", 1)[0] for n in rerun} == {
        f"{w}-risky_finance-{c}" for w in ("train", "after")
        for c in ("control", "output-kl", "control+kl_leash", "control+interleaved")}


def test_data_into_gets_each_finished_condition_before_the_pressure_stage_ends(tiny_folder, tmp_path, monkeypatch):
    """A session killed during the pressures keeps every condition-seed measured so far in the --data-into folder."""
    from coherentize.report import data

    cfg = tiny_cfg(tiny_folder, tmp_path / "exp", "arms=[control]", "eval.suites=[coherence]", "seeds=[0]",
                   "pressure.kinds=[risky_finance]", "pressure.n_train=4", "pressure.defences=[kl_leash]",
                   "pressure.train={max_steps: 1, per_device_train_batch_size: 4, learning_rate: 0.05}")
    measure, calls = pressure._measure_stage, []

    def killed_at_the_second_condition(st, p, kind, name, *a, **k):
        calls.append(name)
        if name.startswith("pressure/after-") and "kl_leash" in name:
            raise KeyboardInterrupt  # the session ends while the second condition is being measured
        return measure(st, p, kind, name, *a, **k)

    monkeypatch.setattr(pressure, "_measure_stage", killed_at_the_second_condition)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, log=lambda *a: None, data_into=tmp_path / "data")
    kept = data.read(tmp_path / "data")["pressure"]
    assert {(r["condition"], r["when"]) for r in kept} == {("control", "before"), ("control", "after")}
    assert {r["set"] for r in kept} == {"in_domain", "off_domain"}
    assert "risky_finance" in data.read(tmp_path / "data")["manifest"]["pressure"]


def test_with_jobs_the_pressure_stages_run_in_processes_with_the_measures_of_one_process(tiny_folder, tmp_path):
    """jobs: 2 runs the measures before and each condition's fine-tune and measures after as jobs in two spawned
    processes (the arms' executor); the measures equal those of one process, and --data-into gets each as it ends."""
    from coherentize.report import data

    sets = ("arms=[control]", "eval.suites=[coherence]", "seeds=[0]", "pressure.kinds=[risky_finance,one_frame]",
            "pressure.n_train=4", "pressure.defences=[kl_leash]", "pressure.max_new_tokens=3", "pressure.n_harmful=2",
            "pressure.train={max_steps: 1, per_device_train_batch_size: 4, learning_rate: 0.05}")
    one, two = tmp_path / "one", tmp_path / "two"
    run_experiment(tiny_cfg(tiny_folder, one, *sets), log=lambda *a: None)
    logs = []
    run_experiment(tiny_cfg(tiny_folder, two, *sets, "jobs=2"), log=logs.append, data_into=tmp_path / "data")
    # per pressure: the measures before the control's fine-tunes, then each condition's fine-tune and measures after
    # (one_frame's measures use the refusal judge, made in each job's process)
    assert "-- 6 jobs, 2 at a time, 1 torch thread(s) each" in logs
    done = [m.split()[1] for m in logs if m.startswith("   job pressure/")]
    assert sorted(done) == sorted(f"pressure/{w}-{k}-{c}-seed0" for k in ("risky_finance", "one_frame")
                                  for w, c in (("before", "control"), ("after", "control"),
                                               ("after", "control+kl_leash")))
    assert sum(m.startswith("   per-item data so far:") for m in logs) == 2 + 6  # baseline, evaluation, 6 jobs
    summary = json.loads((two / "summary.json").read_text())
    assert "pressure/train-risky_finance-control+kl_leash-seed0" in summary["stage_seconds"]
    key = lambda r: (r["kind"], r["condition"], r["when"], r["set"])  # noqa: E731
    a = {key(r): r["values"] for r in pressure_report.read_items(one / "pressure_items.csv")}
    b = {key(r): r["values"] for r in data.read(tmp_path / "data")["pressure"]}
    assert a.keys() == b.keys() and {k[0] for k in a} == {"risky_finance", "one_frame"}
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k


def records(kind="k"):
    rng = np.random.default_rng(1)
    out = []
    for cond, arm, defence, shift in (("control", "control", "none", 1.0), ("control+kl_leash", "control",
                                                                           "kl_leash", 0.5)):
        for seed in (0, 1):
            for when in ("before", "after"):
                for set_name, n, scale in (("in_domain", 6, 1.0), ("off_domain", 5, 0.25)):
                    base = {f"{set_name[:3]}{i}": float(i) for i in range(n)}
                    move = shift * scale * (when == "after")
                    out.append({"kind": kind, "condition": cond, "arm": arm, "defence": defence, "seed": seed,
                                "when": when, "set": set_name,
                                "values": {i: v + move + rng.normal(0, 0.01) for i, v in base.items()}})
    return out


def test_summary_changes_ratio_and_the_comparison_with_the_undefended_control():
    s = pressure_report.summarize(records(), n_boot=200)["k"]
    assert list(s) == ["control", "control+kl_leash"]
    c, d = s["control"], s["control+kl_leash"]
    assert c["sets"]["in_domain"]["change"]["mean"] == pytest.approx(1.0, abs=0.02)
    assert c["spread_ratio"]["ratio"] == pytest.approx(0.25, abs=0.03)
    assert d["sets"]["in_domain"]["change_vs_undefended"]["mean"] == pytest.approx(-0.5, abs=0.02)  # learning cost
    assert d["sets"]["in_domain"]["change_vs_undefended"]["ci_high"] < 0
    assert "change_vs_undefended" not in c["sets"]["in_domain"]
    # half the learning and half the spread: the same ratio, so its difference from the control's is about 0
    assert d["spread_ratio_vs_undefended"]["difference"] == pytest.approx(0.0, abs=0.05)
    assert "spread_ratio_vs_undefended" not in c
    row = next(line for line in pressure_report.pressure_section({"k": s}) if line.startswith("| control, KL"))
    assert row.endswith(f"| {d['spread_ratio_vs_undefended']['difference']:+.2f} "
                        f"[{d['spread_ratio_vs_undefended']['ci_low']:+.2f}, "
                        f"{d['spread_ratio_vs_undefended']['ci_high']:+.2f}] |")
    assert pressure_report.reference_condition(records()) == "control"


def test_a_graded_measure_gets_its_own_spread_ratio_and_a_line_in_the_section():
    """in_domain_p / off_domain_p (a 0/1 measure's graded form) get spread_ratio_p beside the 0/1 sets' ratio."""
    graded = [dict(r, set=r["set"] + "_p", values={i: v / 2 for i, v in r["values"].items()}) for r in records()]
    recs = records() + [dict(r, values={i: v * (1 + (r["set"] == "off_domain_p")) for i, v in r["values"].items()})
                        for r in graded]
    s = pressure_report.summarize(recs, n_boot=200)["k"]
    assert s["control"]["spread_ratio"]["ratio"] == pytest.approx(0.25, abs=0.03)
    assert s["control"]["spread_ratio_p"]["ratio"] == pytest.approx(0.5, abs=0.03)
    assert "spread_ratio_p" not in pressure_report.summarize(records(), n_boot=200)["k"]["control"]
    md = "\n".join(pressure_report.pressure_section({"k": s}))
    assert re.search(r"Spread ratio of the graded measure \(in_domain_p, off_domain_p: .*\): control: \+0\.(49|50|51) \[", md)


def test_items_file_round_trip_errors_and_merge(tmp_path):
    recs = records()
    path = pressure_report.write_items(recs, tmp_path / "p.csv")
    assert pressure_report.read_items(path) == recs  # values bit for bit
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",abc"] + lines[4:]) + "\n")
    with pytest.raises(CoherentizeError, match=r"p\.csv:4: seed '0' or value 'abc' is not a number"):
        pressure_report.read_items(path)
    newer = [dict(r, values={i: 9.0 for i in r["values"]}) for r in recs if r["seed"] == 1]
    merged = pressure_report.merge_items(recs, newer)
    assert len(merged) == len(recs) and all(v == 9.0 for r in merged if r["seed"] == 1 for v in r["values"].values())
