"""Evaluation figures reach TensorBoard: `coherentize eval --report-to tensorboard` writes every summary mean."""

import pytest

from coherentize.cli import main
from coherentize.integrations.tracking import parse_report_to, scalars


def test_scalars_flatten_every_summary():
    results = {"suites": {"jailbreak": {"direct_refusal_rate": {"mean": 0.5, "n": 4, "ci_low": 0.1, "ci_high": 0.9},
                                        "families": {"aim": {"success": {"mean": 0.25, "n": 4}}},
                                        "notes": ["..."]},
                          "overrefusal": {"refusal_rate": {"mean": None, "n": 0}}}}
    assert scalars(results) == {"eval/jailbreak/direct_refusal_rate": 0.5, "eval/jailbreak/families/aim/success": 0.25}


def test_unknown_tracker_is_one_clear_error(capsys, tmp_path):
    assert parse_report_to("tensorboard, none") == ["tensorboard"]
    assert main(["eval", "--model", "x", "--out", str(tmp_path), "--report-to", "mlflow"]) == 2
    assert "--report-to: 'mlflow'" in capsys.readouterr().err


def test_eval_writes_its_figures_to_tensorboard(capsys, tmp_path, tiny_folder):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "res"
    rc = main(["eval", "--model", str(tiny_folder), "--suite", "overrefusal,sycophancy", "--out", str(out),
               "--set", "n_overrefusal=2", "--set", "n_sycophancy=2", "--set", "max_new_tokens=4",
               "--device", "cpu", "--report-to", "tensorboard"])
    assert rc == 0, capsys.readouterr().err
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/overrefusal/refusal_rate", "eval/sycophancy/cued_answer_rate_cued", "eval/sycophancy/accuracy_plain"} <= tags
    assert acc.Scalars("eval/overrefusal/refusal_rate")[0].value in (0.0, 0.5, 1.0)
