"""`coherentize report RUN_DIR...`: runs of seeds 0 and 1 made apart merge into the report of one run of both seeds;
runs of another experiment or another code version are refused with the field that differs."""

import json
import re

import pytest

from coherentize.cli import main
from coherentize.config import apply_overrides, from_dict
from coherentize.recipes.experiment import ExperimentConfig, run_experiment

TIMES = re.compile(r"^\| (baseline|train/|eval/|variations|mine|report|organism|\*\*total\*\*)")


def cfg(folder, out, *extra):
    sets = [f"out_dir={out}", f"model.name_or_path={folder}", "model.device=cpu", "organism.enabled=false",
            "variations.prompt_sets=[benign]", "variations.max_prompts=3", "variations.families=[wrapper]",
            "arms=[control,output-kl]", "train.max_steps=2", "train.per_device_train_batch_size=2",
            "train.learning_rate=0.01", "train.disable_tqdm=true", "response_max_new_tokens=4", "lora.r=2",
            "lora.alpha=4", "eval.suites=[overrefusal,coherence]", "eval.n_overrefusal=3", "eval.n_clusters=2",
            "eval.max_new_tokens=4", "eval.n_boot=50", "eval.embed_model=none", *extra]
    return from_dict(ExperimentConfig, apply_overrides({}, sets))


def tables(report, root) -> list[str]:
    """The report's table rows less stage times, with the run folder's name taken out of paths."""
    return [re.sub(r"`[^`]*/stages/", "`stages/", line).replace(str(root), "ROOT")
            for line in report.read_text().splitlines() if line.startswith("|") and not TIMES.match(line)]


@pytest.fixture(scope="module")
def runs(tiny_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    for name, seeds in (("s0", "[0]"), ("s1", "[1]"), ("both", "[0,1]")):
        run_experiment(cfg(tiny_folder, root / name, f"seeds={seeds}"), log=lambda *a: None)
    return root


def test_two_runs_merge_into_the_report_of_one_run(runs, capsys):
    rc = main(["report", str(runs / "s0"), str(runs / "s1"), "--out", str(runs / "merged")])
    assert rc == 0, capsys.readouterr().err
    merged, both = tables(runs / "merged" / "report.md", runs / "merged"), tables(runs / "both" / "report.md",
                                                                                   runs / "both")
    strip = lambda rows: [re.sub(r"(ROOT|/[^ `|]*/(s0|s1|both|merged))", "", r) for r in rows]  # noqa: E731
    assert strip(merged) == strip(both) and len(merged) > 10
    assert any("control" in r and re.search(r"\d\.\d{3}", r) for r in merged)  # the tables hold the arms' figures
    rc = main(["report", str(runs / "s0"), "--out", str(runs / "only0")])  # one seed alone: other intervals
    assert rc == 0 and strip(tables(runs / "only0" / "report.md", runs / "only0")) != strip(both)
    assert json.loads((runs / "merged" / "merged.json").read_text())["seeds"] == [0, 1]


def test_runs_of_another_experiment_or_code_are_refused(runs, tiny_folder, tmp_path, capsys):
    other = tmp_path / "other"
    run_experiment(cfg(tiny_folder, other, "seeds=[1]", "train.learning_rate=0.02"), only="variations",
                   log=lambda *a: None)
    rc = main(["report", str(runs / "s0"), str(other), "--out", str(tmp_path / "m")])
    assert rc == 2 and "no runs.json" in capsys.readouterr().err  # not finished
    rec = json.loads((runs / "s1" / "runs.json").read_text())
    (other / "runs.json").write_text(json.dumps({**rec, "config": {**rec["config"], "train": {
        **rec["config"]["train"], "learning_rate": 0.02}}}))
    rc = main(["report", str(runs / "s0"), str(other), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "train.learning_rate is 0.02 there and 0.01" in err and len(err.strip().splitlines()) == 1
    (other / "runs.json").write_text(json.dumps({**rec, "code": {**rec["code"], "source": "edited"}}))
    rc = main(["report", str(runs / "s0"), str(other), "--out", str(tmp_path / "m")])
    assert rc == 2 and "different code versions" in capsys.readouterr().err
    rc = main(["report", str(runs / "s0"), str(runs / "both"), "--out", str(tmp_path / "m")])
    assert rc == 2 and "control seed 0 is also in" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_allow_differences_merges_runs_that_differ_and_names_every_field(runs, tmp_path, capsys):
    """A run whose config differs in train.learning_rate (and code in one field) is refused without the flag; with
    --allow-differences it merges, and merged.json and MERGE_NOTES.md name both fields."""
    import shutil

    other = tmp_path / "s1-other"
    shutil.copytree(runs / "s1", other)
    rec = json.loads((other / "runs.json").read_text())
    (other / "runs.json").write_text(json.dumps({
        **rec, "config": {**rec["config"], "train": {**rec["config"]["train"], "learning_rate": 0.02}},
        "code": {**rec["code"], "source": "edited"}}))
    rc = main(["report", str(runs / "s0"), str(other), "--out", str(tmp_path / "refused")])
    assert rc == 2 and "train.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "report.md").exists()
    rc = main(["report", str(runs / "s0"), str(other), "--out", str(tmp_path / "m"), "--allow-differences"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (tmp_path / "m" / "report.md").is_file() and "MERGE_NOTES.md" in err
    merged = json.loads((tmp_path / "m" / "merged.json").read_text())
    assert merged["seeds"] == [0, 1]
    assert {(d["field"], d["value"]) for d in merged["differences"]} == {("train.learning_rate", 0.02),
                                                                        ("code.source", "edited")}
    notes = (tmp_path / "m" / "MERGE_NOTES.md").read_text()
    assert "--allow-differences" in (tmp_path / "m" / "report.md").read_text()  # the report itself says so
    assert "train.learning_rate is 0.02 there and 0.01" in notes and "code.source" in notes
    assert notes.count("\n> ") + notes.startswith("> ") == len(merged["notes"]) == 1
    # the same runs merged again into that folder agree with themselves; runs that do not differ leave no note
    rc = main(["report", str(runs / "s0"), str(runs / "s1"), "--out", str(tmp_path / "m"), "--allow-differences"])
    assert rc == 0 and not (tmp_path / "m" / "MERGE_NOTES.md").exists()
    assert json.loads((tmp_path / "m" / "merged.json").read_text())["differences"] == []
