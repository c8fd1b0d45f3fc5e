import json

import pytest

from coherentize.cli import main


def _run(capsys, *argv):
    rc = main(["eval", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_empty_suite_is_a_clear_error(capsys, tmp_path):
    rc, _, err = _run(capsys, "--model", "smollm2-135m-instruct", "--suite", "", "--out", str(tmp_path))
    assert rc == 2 and "suite is empty" in err and "Traceback" not in err


def test_unknown_suite_is_a_clear_error(capsys, tmp_path):
    rc, _, err = _run(capsys, "--model", "x", "--suite", "jailbreak,vibes", "--out", str(tmp_path))
    assert rc == 2 and "unknown suite" in err


def test_template_file_without_slot_is_a_clear_error(capsys, tmp_path, tiny_folder):
    t = tmp_path / "t.yaml"
    t.write_text("families:\n  mine:\n    - 'Answer this please.'\n")
    rc, _, err = _run(capsys, "--model", str(tmp_path / "not_loaded"), "--suite", "jailbreak", "--templates", str(t),
                      "--out", str(tmp_path / "o"))
    assert rc == 2 and "no {prompt} slot" in err and "mine" in err


def test_missing_model_path_is_a_clear_error(capsys, tmp_path):
    rc, _, err = _run(capsys, "--model", str(tmp_path / "no_such_model"), "--suite", "capability",
                      "--out", str(tmp_path / "o"))
    assert rc == 2 and "does not exist" in err and "Traceback" not in err


def test_training_family_overlap_is_a_clear_error(capsys, tmp_path, tiny_folder):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"id": "t", "anchor": "Hi", "variations": [
        {"prompt": "Pretend: Hi", "family": "roleplay_actor"}]}) + "\n")
    args = ["--model", str(tiny_folder), "--suite", "jailbreak", "--families", "roleplay_actor",
            "--train-clusters", str(train), "--set", "n_harmful=2", "--set", "max_new_tokens=2", "--set", "n_boot=50",
            "--out", str(tmp_path / "o")]
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and "roleplay_actor" in err and "--allow-overlap" in err
    rc, out, err = _run(capsys, *args, "--allow-overlap")
    assert rc == 0, err


def test_eval_writes_results_and_prints_a_table(capsys, tmp_path, tiny_folder):
    out = tmp_path / "res"
    rc, stdout, err = _run(capsys, "--model", str(tiny_folder), "--reference-model", str(tiny_folder),
                           "--suite", "sycophancy,capability,coherence", "--set", "n_sycophancy=4",
                           "--set", "n_mc=4", "--set", "n_clusters=4", "--set", "max_new_tokens=3",
                           "--set", "n_boot=50", "--set", "embed_model=none", "--out", str(out))
    assert rc == 0, err
    body = json.loads((out / "results.json").read_text())
    assert body["suites"]["capability"]["kl_to_reference"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert (out / "records.csv").is_file() and (out / "activation_separation.png").is_file()
    assert "sycophancy.switch_rate" in stdout and "(n=" in stdout


def test_bad_config_field_is_a_clear_error(capsys, tmp_path):
    rc, _, err = _run(capsys, "--model", "x", "--set", "n_harmfull=3", "--out", str(tmp_path))
    assert rc == 2 and "n_harmfull" in err


def test_far_transfer_family_sharing_a_kind_with_training_fails_in_one_line_before_loading(capsys, tmp_path):
    rc, _, err = _run(capsys, "--model", str(tmp_path / "never_loaded"), "--suite", "jailbreak",
                      "--families", "past_tense,evil_confidant", "--set", "train_families=[AIM]",
                      "--set", "jailbreak_far_families=[past_tense,evil_confidant]",
                      "--set", "far_transfer_embedder=none", "--out", str(tmp_path / "o"))
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert "'evil_confidant'" in lines[0] and "'AIM'" in lines[0] and "does not exist" not in err


def test_eval_prints_framed_benign_and_far_transfer_by_kind(capsys, tmp_path, tiny_folder):
    out = tmp_path / "res"
    rc, stdout, err = _run(capsys, "--model", str(tiny_folder), "--suite", "jailbreak",
                           "--families", "roleplay_actor,past_tense,persuasion_pap", "--set", "train_families=[AIM]",
                           "--set", "n_harmful=2", "--set", "n_framed_benign=2", "--set", "max_new_tokens=2",
                           "--set", "n_boot=50", "--set", "far_transfer_embedder=none", "--out", str(out))
    assert rc == 0, err
    body = json.loads((out / "results.json").read_text())
    assert body["suites"]["framed_benign"]["answer_rate_framed"]["n"] == 2
    assert body["suites"]["jailbreak"]["far_transfer"]["families"] == ["past_tense", "persuasion_pap"]
    assert "benign in jailbreak frames: answer rate" in stdout
    assert "far transfer (past_tense, persuasion): attack success" in stdout and "far, persuasion" in stdout


def test_eval_cross_context_suite_reports_cross_beside_within(capsys, tmp_path, tiny_folder):
    out = tmp_path / "res"
    rc, stdout, err = _run(capsys, "--model", str(tiny_folder), "--suite", "cross_context",
                           "--set", "n_cross_context=3", "--set", "cross_context_per_kind=1",
                           "--set", "cross_context_rewordings=[register]", "--set", "n_boot=50", "--out", str(out))
    assert rc == 0, err
    s = json.loads((out / "results.json").read_text())["suites"]["cross_context"]
    assert s["agreement"]["n"] == 3 and s["within_agreement"]["n"] == 3
    assert "cross_context.agreement " in stdout and "cross_context.within_agreement " in stdout


@pytest.mark.parametrize("setting,field", [("n_cross_context=-2", "n_cross_context"),
                                           ("cross_context_kinds=[history,gossip]", "cross_context_kinds")])
def test_bad_cross_context_setting_is_one_line_before_loading(capsys, tmp_path, setting, field):
    rc, _, err = _run(capsys, "--model", str(tmp_path / "never_loaded"), "--suite", "cross_context",
                      "--set", setting, "--out", str(tmp_path / "o"))
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"eval.{field}" in lines[0] and "does not exist" not in err
