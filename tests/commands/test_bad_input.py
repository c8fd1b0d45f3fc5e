"""The bad-input battery of issue 19: each malformed input is one line naming the field or path, exit 2, and (where a
model would load) before any model is loaded."""

import json
import os

import pytest

from coherentize.cli import main


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model fails the test: the error must come first."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    import coherentize.models
    import coherentize.recipes.organism
    import coherentize.recipes.train_job

    for mod in (coherentize.models, coherentize.recipes.train_job, coherentize.recipes.organism):
        monkeypatch.setattr(mod, "load_model", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[:2000]
    return err


def _clusters(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"id": f"c{i}", "anchor": f"Tell me about topic {i}.",
                                     "variations": [f"What is topic {i}?"], "continuations": ["It is a topic."],
                                     "tags": {"split": "train"}}) + "\n" for i in range(2)))
    return p


def _train(tmp_path, tiny_folder, *sets):
    return main(["train", "--set", f"model.name_or_path={tiny_folder}",
                 "--set", f"data.train_file={_clusters(tmp_path)}",
                 "--set", f"train.output_dir={tmp_path / 'out'}", *[x for s in sets for x in ("--set", s)]])


def test_train_act_layers_out_of_range(tmp_path, tiny_folder, capsys, no_model):
    rc = _train(tmp_path, tiny_folder, "train.act_layers=[99]", "train.act_weight=1")
    err = _one_line(capsys)
    assert rc == 2 and "train.act_layers" in err and "layer 99 out of range for a model of 2 layers" in err


@pytest.mark.parametrize("lr", ["-1", "nan", "0"])
def test_train_learning_rate_must_be_finite_and_positive(tmp_path, tiny_folder, capsys, no_model, lr):
    rc = _train(tmp_path, tiny_folder, f"train.learning_rate={lr}")
    err = _one_line(capsys)
    assert rc == 2 and "learning_rate" in err and "finite number > 0" in err


def _run_config(tmp_path, tiny_folder, body: str):
    p = tmp_path / "exp.yaml"
    p.write_text(f"out_dir: {tmp_path / 'run'}\nmodel: {{name_or_path: {tiny_folder}}}\n" + body)
    return p


@pytest.mark.parametrize("body, message", [
    ("arms: [activation]\ntrain: {act_layers: [99]}\n", "train.act_layers: layer 99 out of range"),
    ("arms: [irpan]\narm_definitions: {irpan: {components: activation, train: {act_layers: [-9]}}}\n",
     "arm_definitions.irpan.train.act_layers: layer -9 out of range"),  # a defined arm's layers name the arm
])
def test_run_act_layers_out_of_range_before_any_stage(tmp_path, tiny_folder, capsys, no_model, body, message):
    p = _run_config(tmp_path, tiny_folder, "organism: {enabled: false}\n" + body)
    rc = main(["run", str(p)])
    err = _one_line(capsys)
    assert rc == 2 and message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lr", ["-1", ".nan"])
def test_run_organism_learning_rate(tmp_path, tiny_folder, capsys, no_model, lr):
    p = _run_config(tmp_path, tiny_folder, f"organism: {{learning_rate: {lr}}}\n")
    rc = main(["run", str(p)])
    err = _one_line(capsys)
    assert rc == 2 and "organism" in err and "learning_rate" in err and "finite number > 0" in err


@pytest.mark.parametrize("field", ["variations.n_harmful", "organism.n_harmful", "organism.n_edgy",
                                   "select.n_benign"])
def test_run_negative_counts(tmp_path, tiny_folder, capsys, no_model, field):
    section, name = field.split(".")
    p = _run_config(tmp_path, tiny_folder, f"{section}: {{{name}: -1}}\n")
    rc = main(["run", str(p)])
    err = _one_line(capsys)
    assert rc == 2 and f"{name}=-1 must be an integer >= 0" in err and section in err


def test_run_select_nan_rate(tmp_path, tiny_folder, capsys, no_model):
    p = _run_config(tmp_path, tiny_folder, "select: {learning_rates: [.nan]}\n")
    rc = main(["run", str(p)])
    assert rc == 2 and "select.learning_rates" in _one_line(capsys)


def test_eval_out_is_a_file(tmp_path, capsys, no_model):
    out = tmp_path / "results.json"
    out.write_text("{}")
    rc = main(["eval", "--model", "smollm2-135m-instruct", "--suite", "sycophancy", "--out", str(out)])
    err = _one_line(capsys)
    assert rc == 2 and f"--out {out}: is a file" in err


def test_eval_bad_clusters_before_the_model(tmp_path, capsys, no_model):
    rc = main(["eval", "--model", "smollm2-135m-instruct", "--suite", "coherence", "--clusters",
               str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    err = _one_line(capsys)
    assert rc == 2 and "missing.jsonl" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "anchor": "x"\n')
    rc = main(["eval", "--model", "smollm2-135m-instruct", "--suite", "coherence", "--clusters", str(bad),
               "--out", str(tmp_path / "o")])
    err = _one_line(capsys)
    assert rc == 2 and f"{bad}:1" in err


def test_export_out_is_a_file(tmp_path, tiny_folder, capsys, no_model):
    out = tmp_path / "exported"
    out.write_text("not a folder")
    rc = main(["export", "--model", str(tiny_folder), "--out", str(out)])
    err = _one_line(capsys)
    assert rc == 2 and f"--out {out}: is a file" in err


def _prompts(tmp_path, n=3):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(n)))
    return p


def _augment(tmp_path, out, *extra):
    return main(["augment", "--input", str(_prompts(tmp_path)), "--out", str(out), "--families", "wrapper",
                 "--embedder", "none", "--no-progress", *extra])


def test_augment_out_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = _augment(tmp_path, blocker / "sub" / "c.jsonl")
    err = _one_line(capsys)
    assert rc == 2 and f"{blocker} is a file, not a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_augment_out_in_a_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = _augment(tmp_path, ro / "c.jsonl")
    finally:
        ro.chmod(0o700)
    err = _one_line(capsys)
    assert rc == 2 and f"cannot write in {ro}" in err


def test_augment_out_is_an_existing_folder(tmp_path, capsys):
    d = tmp_path / "existing"
    d.mkdir()
    rc = _augment(tmp_path, d)
    err = _one_line(capsys)
    assert rc == 2 and f"--out {d}: is a folder" in err and "not found" not in err


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_augment_limit_below_one(tmp_path, capsys, limit):
    rc = _augment(tmp_path, tmp_path / "c.jsonl", "--limit", limit)
    err = _one_line(capsys)
    assert rc == 2 and f"--limit {limit}" in err
    assert not (tmp_path / "c.jsonl").exists()


def test_a_huge_template_without_a_slot_is_cut_in_the_error(tmp_path, capsys):
    t = tmp_path / "t.yaml"
    t.write_text("families:\n  - name: big\n    templates: ['" + "x" * 1_000_000 + "']\n")
    rc = _augment(tmp_path, tmp_path / "c.jsonl", "--templates", str(t))
    err = _one_line(capsys)
    assert rc == 2 and len(err) < 1000 and str(t) in err and "slot" in err


@pytest.mark.parametrize("field", ["n_harmful", "n_overrefusal"])
def test_eval_negative_counts(tmp_path, capsys, no_model, field):
    rc = main(["eval", "--model", "smollm2-135m-instruct", "--suite", "jailbreak,overrefusal", "--set", f"{field}=-1",
               "--out", str(tmp_path / "o")])
    err = _one_line(capsys)
    assert rc == 2 and f"eval.{field}: -1 must be >= 0" in err
