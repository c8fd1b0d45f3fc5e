"""The staged experiment on a tiny model saved to a folder (organism off): every stage runs, re-runs skip finished
stages, a run interrupted during training resumes to the same result, and config mistakes are clear errors."""

import csv
import json

import pytest

from coherentize.cli import main
from coherentize.config import apply_overrides, from_dict
from coherentize.errors import CoherentizeError
from coherentize.recipes.experiment import ExperimentConfig, run_experiment, validate
from coherentize.recipes.experiment_config import arm_weights


def tiny_cfg(folder, out, *extra):
    sets = [
        f"out_dir={out}", f"model.name_or_path={folder}", "model.device=cpu", "organism.enabled=false",
        "variations.prompt_sets=[benign]", "variations.max_prompts=3", "variations.families=[synonym,wrapper]",
        "arms=[control,output-kl+activation]", "seeds=[0]", "train.max_steps=4", "train.save_steps=2",
        "train.per_device_train_batch_size=2", "train.act_layers=[1]", "train.learning_rate=0.01",
        "train.disable_tqdm=true", "response_max_new_tokens=4", "lora.r=2", "lora.alpha=4",
        "eval.suites=[jailbreak,overrefusal,coherence]", "eval.n_harmful=4", "eval.n_overrefusal=3", "eval.n_clusters=2",
        "eval.n_mc=2", "eval.max_new_tokens=4", "eval.n_boot=50", "eval.embed_model=none",
        "eval.jailbreak_families=[roleplay_actor,opening_sure]", *extra,
    ]
    return from_dict(ExperimentConfig, apply_overrides({}, sets))


def record_trainings(monkeypatch) -> list:
    """The (stage name, learning rate) of every training job run from now on, in order (the jobs still run)."""
    from coherentize.recipes import jobs

    trained, real_train = [], jobs.train_arm
    monkeypatch.setattr(jobs, "train_arm", lambda st, job, ctx: (
        trained.append((job.name, job.args.learning_rate)), real_train(st, job, ctx))[1])
    return trained


def stage_dirs(out):
    return sorted(p.name for p in (out / "stages").glob("*/") ) + sorted(p.name for p in (out / "stages").glob("*/*/"))


def test_every_stage_runs_then_a_rerun_skips_them(tiny_folder, tmp_path):
    out = tmp_path / "exp"
    report = run_experiment(tiny_cfg(tiny_folder, out), log=lambda *a: None)
    text = report.read_text()
    assert "## Summary" in text and "output-kl+activation" in text and "control" in text
    # beside attack success: the framed-benign answer rate, far-transfer success (training has no attack kind), by kind
    assert "| answer rate of benign prompts in the held\\-out jailbreak frames |" in text
    assert "| far\\-transfer jailbreak success" in text and "### Attack success by attack kind" in text
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 3
    for png in ("metrics.png", "jailbreak_families.png", "training.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = sorted(out.glob("stages/**/done.json"))
    assert len(done) == 1 + 1 + 2 * 2  # variations, baseline, train + eval per arm (organism disabled)
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    logs = []
    run_experiment(tiny_cfg(tiny_folder, out), log=logs.append)
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes  # nothing re-ran
    assert not any(m.startswith("== stage train") for m in logs)
    # A changed training setting re-runs training and evaluation only.
    logs.clear()
    run_experiment(tiny_cfg(tiny_folder, out, "train.learning_rate=0.02"), log=logs.append)
    stages = [m for m in logs if m.startswith("== stage")]
    assert not any("baseline" in m or "variations" in m for m in stages)
    assert sum("train" in m for m in stages) == 2


def test_interrupted_training_resumes_to_the_same_result(tiny_folder, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_experiment(tiny_cfg(tiny_folder, straight, "arms=[output-kl+activation]"), log=lambda *a: None)

    from coherentize import trainer as trainer_mod

    real_step = trainer_mod.ConsistencyTrainer.training_step
    calls = {"n": 0}

    def dying_step(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # after the step-2 checkpoint, as a kill would
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    killed = tmp_path / "killed"
    monkeypatch.setattr(trainer_mod.ConsistencyTrainer, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_cfg(tiny_folder, killed, "arms=[output-kl+activation]"), log=lambda *a: None)
    monkeypatch.setattr(trainer_mod.ConsistencyTrainer, "training_step", real_step)
    assert list(killed.glob("stages/train/*/checkpoint-2"))
    assert not list(killed.glob("stages/train/*/done.json"))
    logs = []
    run_experiment(tiny_cfg(tiny_folder, killed, "arms=[output-kl+activation]"), log=logs.append)
    assert not any("baseline" in m for m in logs if m.startswith("== stage"))
    a = json.loads(next(straight.glob("stages/eval/*/results.json")).read_text())
    b = json.loads(next(killed.glob("stages/eval/*/results.json")).read_text())
    assert a["per_item"] == b["per_item"]
    ma = json.loads(next(straight.glob("stages/train/*/metrics.json")).read_text())["heldout_after"]["mean"]
    mb = json.loads(next(killed.glob("stages/train/*/metrics.json")).read_text())["heldout_after"]["mean"]
    assert ma == pytest.approx(mb, rel=1e-5)


def test_arm_names_and_weights():
    assert arm_weights("control", {}) == {"output": 0.0, "bct": 1.0, "act": 0.0, "on_policy": 0.0}
    assert arm_weights("output-kl+activation", {"output": 2.0, "act": 0.5}) == {"output": 2.0, "bct": 0.0, "act": 0.5,
                                                                              "on_policy": 0.0}
    assert arm_weights("on-policy", {"on_policy": 0.3}) == {"output": 0.0, "bct": 0.0, "act": 0.0, "on_policy": 0.3}
    with pytest.raises(CoherentizeError, match="unknown arm 'activations'"):
        arm_weights("activations", {})


def test_eval_family_used_in_training_is_an_error():
    cfg = from_dict(ExperimentConfig, apply_overrides({}, [
        "variations.n_harmful=10", "variations.jailbreak_families=[roleplay_actor,AIM]",
        "eval.jailbreak_families=[AIM,wikipedia]"]))
    with pytest.raises(CoherentizeError, match=r"AIM frame .* vs evaluation family AIM .*similarity 1.00"):
        validate(cfg)


def test_cli_errors_unknown_arm_and_stage_before_inputs(tmp_path, capsys):
    rc = main(["run", "--set", "arms=[control,telepathy]", "--set", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown arm 'telepathy'" in err and "Traceback" not in err
    rc = main(["run", "--stage", "train", "--set", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "stage 'organism' has not run yet" in err
    rc = main(["run", "--stage", "report", "--set", f"out_dir={tmp_path}", "--set", "organism.enabled=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "has not run yet" in err
    rc = main(["run", str(tmp_path / "nope.yaml")])
    assert rc == 2 and "config file not found" in capsys.readouterr().err


def test_run_killed_with_sigkill_during_training_resumes_to_the_same_result(tiny_folder, tmp_path):
    """A real kill: `coherentize run` in a subprocess gets SIGKILL once a training checkpoint exists."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def argv(out):
        sets = ["out_dir=" + str(out), f"model.name_or_path={tiny_folder}", "model.device=cpu", "organism.enabled=false",
                "variations.prompt_sets=[benign]", "variations.max_prompts=3", "variations.families=[synonym,wrapper]",
                "arms=[output-kl+activation]", "train.max_steps=400", "train.save_steps=100",
                "train.per_device_train_batch_size=2", "train.act_layers=[1]", "train.disable_tqdm=true",
                "response_max_new_tokens=4", "lora.r=2", "lora.alpha=4", "eval.suites=[overrefusal,coherence]",
                "eval.n_overrefusal=3", "eval.n_clusters=2", "eval.n_mc=2", "eval.max_new_tokens=4", "eval.n_boot=50",
                "eval.embed_model=none"]
        return [sys.executable, "-m", "coherentize", "run"] + [a for s in sets for a in ("--set", s)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(argv(straight), env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(argv(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(killed.glob("stages/train/*/checkpoint-*/trainer_state.json")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into the steps after the checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(killed.glob("stages/train/*/checkpoint-*")), "no checkpoint appeared before the run ended"
    assert not list(killed.glob("stages/train/*/done.json")), "the kill came too late to interrupt training"
    baseline_marker = next(killed.glob("stages/baseline-*/done.json"))
    before = baseline_marker.stat().st_mtime_ns
    rerun = subprocess.run(argv(killed), env=env, check=True, capture_output=True, text=True, timeout=600)
    assert "== stage baseline" not in rerun.stdout and "== stage train" in rerun.stdout
    assert baseline_marker.stat().st_mtime_ns == before
    a = json.loads(next(straight.glob("stages/eval/*/results.json")).read_text())
    b = json.loads(next(killed.glob("stages/eval/*/results.json")).read_text())
    assert a["per_item"] == b["per_item"]


def test_full_finetuning_arm_is_evaluated(tiny_folder, tmp_path):
    """Defect 4: with lora.enabled=false the eval stage called PeftModel.from_pretrained on a full-model folder."""
    out = tmp_path / "full"
    cfg = tiny_cfg(tiny_folder, out, "lora.enabled=false", "arms=[output-kl+activation]",
                   "eval.suites=[overrefusal,capability]", "eval.n_capability_texts=2")
    run_experiment(cfg, log=lambda *a: None)
    res = json.loads(next(out.glob("stages/eval/*/results.json")).read_text())
    assert not list(out.glob("stages/train/*/model/adapter_config.json"))
    assert res["suites"]["capability"]["kl_to_reference"]["mean"] > 0  # the trained weights, against the base


def test_evaluation_figures_reach_tensorboard_with_report_to(tiny_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    cfg = tiny_cfg(tiny_folder, out, "arms=[control]", "eval.suites=[overrefusal]", "train.report_to=[tensorboard]")
    run_experiment(cfg, log=lambda *a: None)
    runs = sorted(p for p in (out / "tensorboard").glob("*/*") if p.is_dir())
    assert [p.parent.name for p in runs] == ["eval", "stages"]  # the arm's evaluation and the baseline
    for run in runs:
        acc = EventAccumulator(str(run))
        acc.Reload()
        assert "eval/overrefusal/refusal_rate" in acc.Tags()["scalars"], acc.Tags()["scalars"]


def test_adapters_swapped_on_one_base_give_the_results_of_a_fresh_load_per_arm(tiny_folder, tmp_path, monkeypatch):
    """Issue 10: the evaluation stages load the base model once and swap adapters; the per-item results equal those
    of the previous path (a fresh base + PeftModel per arm, and a second fresh base as the reference)."""
    from peft import PeftModel

    from coherentize import models as models_mod
    from coherentize.clusters import load_clusters
    from coherentize.evaluate import run_suite

    loads = []
    real_load = models_mod.load_model
    monkeypatch.setattr(models_mod, "load_model", lambda *a, **kw: (loads.append(a[0].name_or_path), real_load(*a, **kw))[1])
    out = tmp_path / "swap"
    cfg = tiny_cfg(tiny_folder, out, "eval.suites=[overrefusal,capability,coherence]", "eval.n_capability_texts=2",
                   "eval.n_overrefusal=2")
    run_experiment(cfg, log=lambda *a: None)
    assert loads == [str(tiny_folder)]  # baseline and both arms (and both references): one load
    monkeypatch.setattr(models_mod, "load_model", real_load)

    train_clusters = load_clusters(next(out.glob("stages/variations-*/train.jsonl")))
    for arm in ("control", "output-kl+activation"):
        tdir = next(out.glob(f"stages/train/{arm}-seed0-*"))
        edir = next(out.glob(f"stages/eval/{arm}-seed0-*"))
        base, tok = real_load(cfg.model)
        model = PeftModel.from_pretrained(base, str(tdir / "model")).eval()
        reference = real_load(cfg.model)[0]
        old = run_suite(model, tok, cfg.eval, reference_model=reference, train_clusters=train_clusters, quiet=True)
        new = json.loads((edir / "results.json").read_text())
        assert new["per_item"] == json.loads(json.dumps(old["per_item"])), arm
        with open(edir / "records.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["id"], r["label"]) for r in rows] == [(r["id"], r["label"]) for r in old["records"]]


def test_cache_key_ignores_cosmetic_settings_follows_the_code_and_force_reruns(tiny_folder, tmp_path, monkeypatch):
    """Defect 6: a stage's key had no code version, and cosmetic settings (logging, report_to) forced a retrain."""
    from coherentize.recipes import stages as stages_mod

    out = tmp_path / "keys"
    base = ["arms=[control]", "eval.suites=[overrefusal]", "eval.n_overrefusal=2"]

    def stages(*extra, force=()):
        logs = []
        run_experiment(tiny_cfg(tiny_folder, out, *base, *extra), log=logs.append, force=force)
        return sorted(m.split(":")[0].removeprefix("== stage ") for m in logs if m.startswith("== stage"))

    every = ["baseline", "eval/control-seed0", "report", "train/control-seed0", "variations"]
    assert stages() == every
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["stage_seconds"]) == every and summary["reused"] == []
    assert summary["total_seconds"] == pytest.approx(sum(summary["stage_seconds"].values()))
    # Cosmetic settings: nothing but the report re-runs.
    assert stages("train.logging_steps=1", "train.report_to=[tensorboard]", "train.disable_tqdm=false",
                  "train.dataloader_num_workers=0", "train.save_total_limit=3") == ["report"]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["reused"]) == sorted(set(every) - {"report"})
    assert sorted(summary["stage_seconds"]) == every  # reused stages keep the time recorded when they ran
    # --force re-runs the named stages only.
    assert stages(force=["eval"]) == ["eval/control-seed0", "report"]
    # A change of the code re-runs every stage.
    monkeypatch.setattr(stages_mod, "source_hash", lambda: "edited-source")
    assert stages() == every
    assert stages() == ["report"]


def test_failed_stage_run_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "never"
    rc = main(["run", "--stage", "train", "--set", f"out_dir={out}", "--set", "organism.enabled=false"])
    assert rc == 2 and "has not run yet" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["run", "--force", "training", "--set", f"out_dir={out}"])
    assert rc == 2 and "--force training" in capsys.readouterr().err and not out.exists()


def test_stages_run_one_at_a_time_with_stage(tiny_folder, tmp_path):
    """--stage runs one stage when the stages it reads are done (train used to demand the baseline evaluation, and
    every stage demanded the stages after it)."""
    out = tmp_path / "one"
    cfg = tiny_cfg(tiny_folder, out, "arms=[control]", "eval.suites=[overrefusal]", "eval.n_overrefusal=2")
    for stage in ("variations", "train", "eval", "baseline", "report"):
        logs = []
        run_experiment(cfg, only=stage, log=logs.append)
        assert [m.split(":")[0] for m in logs if m.startswith("== stage")] == \
            [f"== stage {stage}" + ("/control-seed0" if stage in ("train", "eval") else "")]
    assert (out / "report.md").is_file()
    logs = []
    run_experiment(cfg, log=logs.append)
    assert [m for m in logs if m.startswith("== stage")] == ["== stage report: report.md and report.html"]


def test_defined_arm_sets_its_components_weights_and_training_fields(tiny_folder, tmp_path):
    from coherentize.recipes.experiment_config import arm_components, arm_train_args

    cfg = tiny_cfg(tiny_folder, tmp_path / "x", "arms=[control,act-l2]",
                   "arm_definitions={act-l2: {components: activation, weights: {act: 1.0e-4}, "
                   "train: {act_metric: l2, act_layers: [0, 1], leash_weight: 0, learning_rate: '2e-4'}}}")
    validate(cfg)
    assert arm_components(cfg, "act-l2")[:2] == ("activation", {"output": 0.0, "bct": 0.0, "act": 1e-4,
                                                                  "on_policy": 0.0})
    a = arm_train_args(cfg, "act-l2", seed=3)
    assert (a.act_metric, a.act_layers, a.leash_weight, a.learning_rate, a.seed) == ("l2", [0, 1], 0.0, 2e-4, 3)
    assert (a.output_weight, a.bct_weight, a.act_weight) == (0.0, 0.0, 1e-4)
    b = arm_train_args(cfg, "control", seed=3)  # the experiment's own settings are untouched
    assert (b.act_metric, b.leash_weight, b.learning_rate, b.bct_weight) == ("l2_normalized", cfg.train.leash_weight,
                                                                            0.01, 1.0)
    assert arm_train_args(cfg, "act-l2", seed=0, learning_rate=0.5).learning_rate == 0.5
    for bad, msg in [("train: {act_metrik: l2}", "arm_definitions.act-l2.train: unknown training field 'act_metrik'"),
                     ("train: {act_weight: 2}", "'act_weight' is set by the arm's components"),
                     ("train: {act_metric: cosine2}", "arm_definitions.act-l2.train"),
                     ("weights: {activation: 1}", "arm_definitions.act-l2.weights: unknown component 'activation'"),
                     ("components: actvation", "unknown arm 'actvation'")]:
        with pytest.raises(CoherentizeError, match=msg.replace("(", r"\(").replace("'", "'")):
            validate(tiny_cfg(tiny_folder, tmp_path / "x", "arms=[act-l2]", f"arm_definitions={{act-l2: {{{bad}}}}}"))


def test_learning_rate_chosen_on_validation_and_its_run_reused_as_that_seed(tiny_folder, tmp_path, monkeypatch):
    """select: each candidate rate trains at the select seed and is scored on the VALIDATION split; the best harmonic
    mean wins (ties: the smaller rate), the winning candidate IS that seed's run (no second training), other seeds
    train at the chosen rate, and control keeps train.learning_rate."""
    from coherentize import sources
    from coherentize.recipes import selection

    seen_splits = []  # the splits the validation prompts are read from
    real_sr, real_be, real_vp = sources.strongreject, sources.benign_edgy, selection.validation_prompts

    def validation_prompts(sel, v):
        monkeypatch.setattr(sources, "strongreject", lambda split=None, n=None, **k: (
            seen_splits.append(("h", split)), real_sr(split=split, n=n, **k))[1])
        monkeypatch.setattr(sources, "benign_edgy", lambda split=None, n=None: (
            seen_splits.append(("b", split)), real_be(split=split, n=n))[1])
        try:
            return real_vp(sel, v)
        finally:
            monkeypatch.setattr(sources, "strongreject", real_sr)
            monkeypatch.setattr(sources, "benign_edgy", real_be)
    monkeypatch.setattr(selection, "validation_prompts", validation_prompts)
    # A scorer that prefers the larger rate, from the trained model's own learning rate (read from its train args).
    scores = {0.01: 0.4, 0.03: 0.7}

    def fake_score(model, tok, prompts, max_new_tokens, fmt):
        assert prompts["harmful"] and prompts["benign"]
        lr = fake_score.lrs.pop(0)
        return {"harmful_refusal": scores[lr], "n_harmful_prompts": len(prompts["harmful"]), "benign_answer": 1.0,
                "n_benign": len(prompts["benign"]), "harmonic_mean": scores[lr]}
    fake_score.lrs = [0.01, 0.03, 0.01, 0.03]  # the control's candidates, then the other arm's
    monkeypatch.setattr(selection, "validation_score", fake_score)
    trained = record_trainings(monkeypatch)
    out = tmp_path / "sel"
    cfg = tiny_cfg(tiny_folder, out, "seeds=[0,1]", "select.learning_rates=[0.01,0.03]", "select.n_harmful=2",
                   "select.n_benign=2", "eval.suites=[overrefusal]")
    run_experiment(cfg, log=lambda *a: None)
    sel = json.loads((out / "selection.json").read_text())
    assert list(sel) == ["control", "output-kl+activation"]  # every arm that trains, the control too (equal arms)
    assert sel["output-kl+activation"]["chosen_learning_rate"] == 0.03 == sel["control"]["chosen_learning_rate"]
    assert [c["harmonic_mean"] for c in sel["output-kl+activation"]["candidates"]] == [0.4, 0.7]
    assert set(seen_splits) == {("h", "validation"), ("b", "validation")}  # never the test split the eval scores
    assert sorted(trained) == sorted([("output-kl+activation@lr0.01-seed0", 0.01), ("output-kl+activation@lr0.03-seed0", 0.03),
                                      ("output-kl+activation-seed1", 0.03), ("control@lr0.01-seed0", 0.01),
                                      ("control@lr0.03-seed0", 0.03), ("control-seed1", 0.03)])
    evals = {json.loads(p.read_text())["seed"]: p.parent for p in out.glob("stages/eval/output-kl+activation-seed*/done.json")}
    assert len(evals) == 2
    report = (out / "report.md").read_text()
    assert "| output\\-kl\\+activation | 0.03 (chosen) | 0.700 (n=" in report
    assert "| output\\-kl\\+activation | 0.01 | 0.400 (n=" in report
    # a re-run trains nothing and chooses the same rate
    trained.clear()
    fake_score.lrs = []
    run_experiment(cfg, log=lambda *a: None)
    assert trained == [] and json.loads((out / "selection.json").read_text()) == sel


def test_mined_and_random_arms_train_on_the_mined_and_random_clusters(tiny_folder, tmp_path, monkeypatch):
    """data: mined trains on the mine stage's top_k clusters (ranked by coherentize.evaluate.mining on the untrained model);
    data: random on as many clusters drawn per seed; both the same steps; the mine stage runs once."""
    from coherentize.clusters import load_clusters
    from coherentize.recipes import jobs

    used = {}
    real_train = jobs.train_arm
    monkeypatch.setattr(jobs, "train_arm", lambda st, job, ctx: (
        used.__setitem__(job.name, [c.id for c in load_clusters(job.data)]), real_train(st, job, ctx))[1])
    out = tmp_path / "mined"
    defs = ("arm_definitions={mined: {components: output-kl, data: mined}, "
            "random: {components: output-kl, data: random}}")
    cfg = tiny_cfg(tiny_folder, out, "arms=[mined,random]", defs, "mine.top_k=2", "seeds=[0,1]",
                   "eval.suites=[overrefusal]", "variations.max_prompts=5")
    logs = []
    run_experiment(cfg, log=logs.append)
    mine_dir = next(out.glob("stages/mine-*"))
    ranked = json.loads((mine_dir / "ranked.json").read_text())
    pool = [c.id for c in load_clusters(next(out.glob("stages/variations-*")) / "train.jsonl")]
    assert sorted(r["id"] for r in ranked) == sorted(pool) and len(pool) > 2
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    top = [r["id"] for r in ranked[:2]]
    assert used["mined-seed0"] == used["mined-seed1"] and sorted(used["mined-seed0"]) == sorted(top)
    assert len(used["random-seed0"]) == len(used["random-seed1"]) == 2
    assert set(used["random-seed0"]) <= set(pool)
    assert sum(m.startswith("== stage mine") for m in logs) == 1
    with pytest.raises(CoherentizeError, match="arm_definitions.mined.data: 'minde'"):
        validate(tiny_cfg(tiny_folder, out, "arms=[mined]", "arm_definitions={mined: {components: bct, data: minde}}"))


def test_on_policy_arm_trains_and_is_reported(tiny_folder, tmp_path):
    out = tmp_path / "onpol"
    cfg = tiny_cfg(tiny_folder, out, "arms=[on-policy]", "train.on_policy_max_new_tokens=3", "train.leash_weight=0",
                   "eval.suites=[overrefusal]")
    report = run_experiment(cfg, log=lambda *a: None)
    metrics = json.loads(next(out.glob("stages/train/on-policy-seed0-*/metrics.json")).read_text())
    steps = [row for row in metrics["train_log"] if "loss/on_policy" in row]
    assert len(steps) == cfg.train.max_steps and all(r["loss/on_policy"] > 0 for r in steps)
    assert all(r["loss"] == pytest.approx(r["loss/on_policy"]) for r in steps)  # the arm's only component
    assert "on-policy" in report.read_text()


def _per_item(out):
    return {p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text())["per_item"]
            for p in sorted(out.glob("stages/**/results.json"))}


def expected_progress(logs: list[str]) -> int:
    """How many times --data-into must have been written with jobs: once per evaluation (or the baseline) that ended
    once the baseline had (an evaluation that ends before the baseline writes nothing yet; the baseline's own write
    includes it), so the count depends on the order the jobs ended in, which the log gives."""
    done = [m.split()[1] for m in logs if m.startswith("   job ")]
    first = done.index("baseline")
    return sum(not j.startswith("train/") for j in done[first:])


def test_jobs_run_in_processes_of_their_own_with_the_results_of_one_process(tiny_folder, tmp_path, capfd):
    """jobs: 2 runs the baseline and the arm-seed jobs two at a time in spawned processes; the stages, their keys
    and the per-item results equal those of one process (the tests run every process on one thread)."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_experiment(tiny_cfg(tiny_folder, one, "seeds=[0,1]"), log=lambda *a: None)
    logs = []
    capfd.readouterr()
    run_experiment(tiny_cfg(tiny_folder, two, "seeds=[0,1]", "jobs=2"),
                   log=lambda m: (logs.append(m), print(m, flush=True)), data_into=tmp_path / "two_data")
    # each job is seen as soon as it ends (its evaluation queued then), not once every queued job has ended
    lines = capfd.readouterr().out.splitlines()
    first = next(i for i, m in enumerate(lines) if m.endswith("(1 of 9)"))
    trained = [i for i, m in enumerate(lines) if m.startswith("   train/") and " done in " in m]
    assert len(trained) == 4 and first < trained[-1], lines
    # an arm-seed's evaluation starts as soon as a process frees up after its training, before later trainings
    begun = [m.split()[2] for m in lines if m.startswith("== stage ")]
    assert begun.index("eval/control-seed0:") < begun.index("train/control-seed1:"), begun
    names = lambda out: sorted(str(p.relative_to(out)) for p in out.glob("stages/**/done.json"))  # noqa: E731
    assert names(two) == names(one) and len(names(one)) == 2 + 2 * 2 * 2
    assert "-- 9 jobs, 2 at a time, 1 torch thread(s) each" in logs  # baseline, 4 trainings, 4 evaluations
    done = [m.split()[1] for m in logs if m.startswith("   job ")]
    assert len(done) == 9 and done.index("train/control-seed1") < done.index("eval/control-seed1")
    # --data-into with jobs: each finished evaluation's data arrive (and are logged here) as its job ends
    assert sum(m.startswith("   per-item data so far:") for m in logs) == expected_progress(logs)
    from coherentize.report import data

    assert len(data.read(tmp_path / "two_data")["manifest"]["runs"]) == 5
    a, b = _per_item(one), _per_item(two)
    assert a.keys() == b.keys() and len(a) == 5
    for stage in a:
        for metric, values in a[stage].items():
            assert b[stage][metric] == pytest.approx(values, rel=1e-4, abs=1e-6), (stage, metric)
    summary = json.loads((two / "summary.json").read_text())
    assert {k for k in summary["stage_seconds"] if k.startswith(("train/", "eval/", "baseline"))} == {
        "baseline", *(f"{s}/{arm}-seed{seed}" for s in ("train", "eval") for arm in ("control", "output-kl+activation")
                      for seed in (0, 1))}
    # a re-run with jobs finds everything done and starts no process
    logs.clear()
    run_experiment(tiny_cfg(tiny_folder, two, "seeds=[0,1]", "jobs=2"), log=logs.append)
    assert not any(m.startswith(("== stage train", "== stage eval", "== stage baseline")) or " jobs, " in m
                   for m in logs)


def test_a_failing_job_stops_the_others_and_raises_here(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    out = tmp_path / "fail"
    cfg = tiny_cfg(folder, out, "seeds=[0,1]", "jobs=2")
    run_experiment(cfg, only="variations", log=lambda *a: None)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()  # every job fails to load the model
    with pytest.raises(Exception) as e:
        run_experiment(cfg, log=lambda *a: None)
    assert "model" in str(e.value).lower() or "safetensors" in str(e.value).lower()
    assert not list(out.glob("stages/train/*/done.json")) and not list(out.glob("stages/eval/*/done.json"))


def test_jobs_must_be_positive(tiny_folder, tmp_path):
    with pytest.raises(CoherentizeError, match="jobs: must be >= 1"):
        validate(tiny_cfg(tiny_folder, tmp_path / "x", "jobs=0"))


def test_stage_keys_carry_the_resolved_precision(tmp_path, monkeypatch):
    """`model.precision: auto` is bfloat16 on one CPU and float32 on another: the same config's stages differ."""
    from coherentize.recipes.stages import Stages

    config = {"model": {"precision": "auto", "device": "cpu"}}
    keys = []
    for forced in ("float32", "bf16-mixed"):
        monkeypatch.setenv("COHERENTIZE_PRECISION", forced)
        st = Stages(tmp_path, config, log=lambda *a: None)
        keys.append(st.key("baseline", {"n": 1}))
        assert st.code["precision"] == forced
    assert keys[0] != keys[1]


def test_far_transfer_family_sharing_a_kind_with_training_fails_before_any_stage(tmp_path, capsys):
    """eval.jailbreak_far_families is checked against the training families (variations' families and the jailbreak
    families around harmful anchors) in validate: one line naming both, no traceback, no stage folder."""
    out = tmp_path / "run"
    sets = [f"out_dir={out}", "organism.enabled=false", "variations.n_harmful=10",
            "variations.jailbreak_families=[roleplay_actor]", "eval.jailbreak_families=[evil_confidant,past_tense]",
            "eval.far_transfer_embedder=none"]
    with pytest.raises(CoherentizeError, match=r"far-transfer family 'evil_confidant' shares the attack kind "
                                               r"'roleplay' with training family 'roleplay_actor'"):
        validate(from_dict(ExperimentConfig,
                           apply_overrides({}, sets + ["eval.jailbreak_far_families=[evil_confidant]"])))
    validate(from_dict(ExperimentConfig, apply_overrides({}, sets + ["eval.jailbreak_far_families=[past_tense]"])))
    args = ["run"] + [a for s in sets + ["eval.jailbreak_far_families=[past_tense,evil_confidant]"]
                      for a in ("--set", s)]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'evil_confidant'" in err and "'roleplay_actor'" in err and "eval.jailbreak_far_families" in err
    assert not out.exists()


def test_selecting_the_rate_of_some_arms_only_is_refused(tiny_folder, tmp_path):
    """Equal arms: a rate tuned for one arm and not the control would confound the comparison with the rate."""
    from coherentize.errors import CoherentizeError
    from coherentize.recipes.experiment_config import validate

    cfg = tiny_cfg(tiny_folder, tmp_path / "x", "select.learning_rates=[0.01,0.03]", "select.arms=[output-kl+activation]")
    with pytest.raises(CoherentizeError, match=r"select.arms: .* the control included, or to none"):
        validate(cfg)
    assert not (tmp_path / "x").exists()


def test_the_bfloat16_path_of_a_cpu_with_bf16_runs_every_stage(tiny_folder, tmp_path, monkeypatch):
    """What `model.precision: auto` does on an AMD Zen 4 or an Intel AMX CPU (the suite pins float32, so this path is
    asked for here): organism, training under bf16 autocast on float32 master weights, evaluation on bf16 weights.
    Before the fix, TrainingArguments refused bf16 on CPU without use_cpu, at the first training stage."""
    from coherentize import precision

    monkeypatch.delenv("COHERENTIZE_PRECISION", raising=False)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("COHERENTIZE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bf16"
    cfg = tiny_cfg(tiny_folder, out, "organism.enabled=true", "organism.n_harmful=4", "organism.n_benign=2",
                   "organism.n_edgy=2", "organism.n_wrapped_benign=2", "organism.max_steps=2",
                   "organism.answer_max_new_tokens=4", "eval.suites=[jailbreak,overrefusal]")
    run_experiment(cfg, log=lambda *a: None)
    organism = json.loads(next((tmp_path / "cache" / "organisms").glob("*/*/organism.json")).read_text())
    assert organism["precision"]["precision"] == "bf16-mixed" and organism["precision"]["autocast"] == "bfloat16"
    metrics = [json.loads(p.read_text()) for p in out.glob("stages/train/*/metrics.json")]
    assert metrics and all(m["precision"] == {"weights": "float32", "device": "cpu", "precision": "bf16-mixed",
                                              "autocast": "bfloat16"} for m in metrics)
    results = [json.loads(p.read_text()) for p in out.glob("stages/eval/*/results.json")]
    assert results and all(r["precision"]["weights"] == "bfloat16" for r in results)


def test_data_into_gets_each_finished_evaluation_and_keeps_an_earlier_sessions_arm_seeds(tiny_folder, tmp_path,
                                                                                         monkeypatch):
    """A long grid must survive the end of a session: --data-into receives every finished evaluation's per-item data
    as its job ends (so a run killed later keeps it), the grid runs seed by seed (a stopped grid has whole seeds, not
    one arm's five), and a later session on another out_dir of the same name runs other seeds into the same folder
    without losing the first session's."""
    from coherentize.recipes import jobs
    from coherentize.report import data, section

    dest = tmp_path / "results" / "grid_data"
    cfg = tiny_cfg(tiny_folder, tmp_path / "s1" / "grid", "seeds=[0,1]")
    real, calls = jobs.evaluate, []

    def third_arm_eval_dies(model, tok, reference, *a, **k):
        if reference is not None:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("session ended")
        return real(model, tok, reference, *a, **k)

    monkeypatch.setattr(jobs, "evaluate", third_arm_eval_dies)
    with pytest.raises(RuntimeError, match="session ended"):
        run_experiment(cfg, log=lambda *a: None, data_into=dest)
    got = data.read(dest)
    assert [r["name"] for r in got["manifest"]["runs"]] == ["baseline", "control-seed0", "output-kl+activation-seed0"]
    assert got["manifest"]["planned"] == ["control-seed0", "control-seed1", "output-kl+activation-seed0",
                                          "output-kl+activation-seed1"]
    assert got["items"]["control-seed0"] and got["labels"]["control-seed0"]
    assert ("Partial grid: 2 of 4 arm-seeds finished**; not run yet: control-seed1, output-kl+activation-seed1"
            in section.section_markdown(got, "grid_data"))

    monkeypatch.setattr(jobs, "evaluate", real)
    run_experiment(cfg, log=lambda *a: None, data_into=dest)  # the same session resumes: seed 1 only
    first = data.read(dest)
    assert [r["name"] for r in first["manifest"]["runs"]] == ["baseline", "control-seed0", "control-seed1",
                                                              "output-kl+activation-seed0", "output-kl+activation-seed1"]
    assert first["items"] == data.read(tmp_path / "s1" / "grid" / "data")["items"]

    # the next session: a new out_dir (same name), seed 2 only, into the same folder
    run_experiment(tiny_cfg(tiny_folder, tmp_path / "s2" / "grid", "seeds=[2]"), log=lambda *a: None, data_into=dest)
    both = data.read(dest)
    names = [r["name"] for r in both["manifest"]["runs"]]
    assert names == ["baseline", "control-seed0", "control-seed1", "control-seed2", "output-kl+activation-seed0",
                     "output-kl+activation-seed1", "output-kl+activation-seed2"]
    assert both["manifest"]["seeds"] == [0, 1, 2]
    for n in names[1:3] + names[4:6]:
        assert both["items"][n] == first["items"][n] and both["labels"][n] == first["labels"][n]
    assert all(r["code"]["source"] for r in both["manifest"]["runs"])
    text = section.section_markdown(both, "grid_data")
    assert "Partial grid" not in text and "seeds: 0, 1, 2" in text


def test_data_into_a_folder_of_another_experiment_fails_before_any_stage(tiny_folder, tmp_path):
    from coherentize.report import data

    dest = tmp_path / "d"
    data.write({"manifest": {"format": data.FORMAT, "experiment": "other", "model": str(tiny_folder), "judge": "string",
                             "runs": [{"name": "baseline"}]}, "items": {"baseline": {}}, "labels": {"baseline": []}},
               dest)
    out = tmp_path / "grid"
    with pytest.raises(CoherentizeError, match=r"--data-into .*d: it holds the data of experiment 'other', this run's "
                                               r"experiment is 'grid'"):
        run_experiment(tiny_cfg(tiny_folder, out), log=lambda *a: None, data_into=dest)
    assert not out.exists()


def test_a_later_session_takes_the_learning_rates_chosen_in_an_earlier_one_from_data_into(tiny_folder, tmp_path,
                                                                                         monkeypatch):
    """The selection trains every arm at every candidate rate (most of a session on a 0.5B model); a grid continued
    on another machine must not train them again: --data-into's selection.json gives each arm its chosen rate."""
    from coherentize.recipes import selection
    from coherentize.report import data

    scores = {0.01: 0.4, 0.03: 0.7}
    lrs = []

    def fake_score(model, tok, prompts, max_new_tokens, fmt):
        s = scores[lrs.pop(0)]
        return {"harmful_refusal": s, "n_harmful_prompts": 2, "benign_answer": 1.0, "n_benign": 2, "harmonic_mean": s}

    monkeypatch.setattr(selection, "validation_score", fake_score)
    trained = record_trainings(monkeypatch)
    dest = tmp_path / "grid_data"
    sets = ("select.learning_rates=[0.01,0.03]", "select.n_harmful=2", "select.n_benign=2", "eval.suites=[overrefusal]")
    lrs[:] = [0.01, 0.03, 0.01, 0.03]
    run_experiment(tiny_cfg(tiny_folder, tmp_path / "s1" / "grid", "seeds=[0]", *sets), log=lambda *a: None,
                   data_into=dest)
    assert data.read(dest)["selection"]["control"]["chosen_learning_rate"] == 0.03
    trained.clear()
    logs = []
    run_experiment(tiny_cfg(tiny_folder, tmp_path / "s2" / "grid", "seeds=[1]", *sets), log=logs.append,
                   data_into=dest)
    assert sorted(trained) == [("control-seed1", 0.03), ("output-kl+activation-seed1", 0.03)]  # no candidate
    assert sum("chosen on validation in an earlier session" in m for m in logs) == 2
    got = data.read(dest)
    assert got["manifest"]["seeds"] == [0, 1] and list(got["selection"]) == ["control", "output-kl+activation"]
    # other candidate rates than the earlier session's: the selection runs again
    lrs[:] = [0.01, 0.02, 0.01, 0.02]
    scores[0.02] = 0.1
    trained.clear()
    run_experiment(tiny_cfg(tiny_folder, tmp_path / "s3" / "grid", "seeds=[1]", "select.learning_rates=[0.01,0.02]",
                            *sets[1:]), log=lambda *a: None, data_into=dest)
    assert ("control@lr0.02-seed0", 0.02) in trained


def test_an_arm_trains_on_the_variation_families_it_names_and_an_unknown_family_fails_first(tiny_folder, tmp_path):
    """Within-context, cross-context and both as arms of one experiment (issue 26) need an arm to name its variation
    families: its training clusters keep only those, in its own stage (the other arm's data untouched)."""
    from coherentize.clusters import load_clusters

    out = tmp_path / "fam"
    cfg = tiny_cfg(tiny_folder, out, "arms=[output-kl,okl-synonym]", "eval.suites=[overrefusal]",
                   "arm_definitions={okl-synonym: {components: output-kl, families: [synonym]}}")
    run_experiment(cfg, log=lambda *a: None)
    used = load_clusters(next(out.glob("stages/train/okl-synonym-seed0*/families.jsonl")))
    assert used and {v.family for c in used for v in c.variations} == {"synonym"}
    everything = load_clusters(next(out.glob("stages/variations*/train.jsonl")))
    assert {v.family for c in everything for v in c.variations} >= {"synonym", "wrapper"}
    assert not list(out.glob("stages/train/output-kl-seed0*/families.jsonl"))
    bad = tiny_cfg(tiny_folder, tmp_path / "bad", "arms=[okl-x]",
                   "arm_definitions={okl-x: {components: output-kl, families: [typos]}}")
    with pytest.raises(CoherentizeError, match=r"arm_definitions\.okl-x\.families: 'typos' is not among "
                                               r"variations\.families \(synonym, wrapper\)"):
        run_experiment(bad, log=lambda *a: None)
    assert not (tmp_path / "bad").exists()
