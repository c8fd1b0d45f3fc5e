"""`coherentize train` at the CLI: bad input gives one clear line and exit 2; the real model trains end to end."""

import json

import pytest

from coherentize.cli import main


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def clusters_file(tmp_path, lines):
    p = tmp_path / "clusters.jsonl"
    p.write_text("\n".join(json.dumps(l) if isinstance(l, dict) else l for l in lines) + "\n")
    return p


OK = {"id": "a", "anchor": "hi", "variations": ["hello"], "tags": {"split": "train"}}


@pytest.mark.parametrize(
    "lines, overrides, message",
    [
        ([OK, '{"id": "b", "anchor": '], [], "clusters.jsonl:2: not valid JSON"),
        ([OK, {"id": "b", "anchor": "alone", "tags": {"split": "train"}}], [], "clusters.jsonl:2: cluster 'b' has only its anchor"),
        ([OK], ["train.learnig_rate=0.1"], "unknown field 'learnig_rate'. Valid fields:"),
        ([OK], ["model.name_or_path=/no/such/model"], "model.name_or_path: '/no/such/model' does not exist"),
        ([OK], ["model.name_or_path=./missing.gguf"], "GGUF file './missing.gguf' not found"),
        ([OK], ["data.split=validation"], "no cluster in"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys, lines, overrides, message):
    path = clusters_file(tmp_path, lines)
    sets = [f"data.train_file={path}", "data.eval_split=null", f"train.output_dir={tmp_path / 'out'}", "model.name_or_path=/no/such/model"]
    if not any(o.startswith("model.") for o in overrides):
        sets[-1] = "model.name_or_path=smollm2-135m-instruct"
    args = ["train"] + [a for s in sets + overrides for a in ("--set", s)]
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("coherentize train: error:")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_missing_config_file(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert rc == 2 and "none.yaml: config file not found" in err


@pytest.mark.slow
def test_train_on_packaged_smollm2_lowers_heldout_divergence(tmp_path, capsys):
    """The issue's acceptance run, shortened: packaged model, packaged demo clusters (12 train / 4 held out)."""
    out = tmp_path / "run"
    rc, stdout, err = run_cli(
        capsys, "train", "--config", "configs/train.yaml",
        "--set", f"train.output_dir={out}", "--set", "train.max_steps=8", "--set", "train.learning_rate=1e-3",
        "--set", "train.disable_tqdm=true", "--set", "data.response_max_new_tokens=16",
        "--set", "train.max_response_length=16",
    )
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["heldout_before"]["mean"], metrics["heldout_after"]["mean"]
    assert metrics["n_train_clusters"] == 12 and after["n_examples"] == 8
    assert after["output_js"] < before["output_js"]
    assert after["act_l2/layer15"] < before["act_l2/layer15"]
    assert 0 < after["kl_to_original"] < 0.5
    assert (out / "model" / "adapter_config.json").is_file() and (out / "responses.jsonl").is_file()
    steps = [h for h in metrics["train_log"] if "loss/output" in h]
    assert len(steps) == 8 and all("loss/act" in h and "loss/leash" in h for h in steps)
    assert "output_js" in stdout


def test_help_lists_every_config_field_with_its_doc_grouped_by_section(capsys):
    import dataclasses

    from coherentize.recipes.train_job import TrainJob

    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    for section in dataclasses.fields(TrainJob):
        if not dataclasses.is_dataclass(section.default_factory if section.default_factory is not dataclasses.MISSING
                                        else section.default):
            continue
        header = next(i for i, l in enumerate(lines) if l.startswith(f"[{section.name}] "))
        for f in dataclasses.fields(section.default_factory()):
            if not f.init or f.name.startswith("_"):
                continue
            row = next((l for l in lines[header:] if l.startswith(f"  {section.name}.{f.name} ")), None)
            assert row is not None, f"{section.name}.{f.name} missing from train --help"
            assert len(row.split(None, 3)) == 4 and row.rstrip()[-1] not in "=", row  # name = default  doc
    assert "train.report_to = 'none'" in text and "tensorboard" in text
    assert "train.act_weight = 0.0" in text and "Weight of activation consistency" in text
    assert "train.learning_rate = 5e-05" in text and "learning rate" in text  # a TrainingArguments field's help


def test_tensorboard_gets_training_losses_and_heldout_evaluation(tmp_path, capsys, tiny_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    clusters = [{"id": f"c{i}", "anchor": f"What is {i} plus {i}?", "variations": [f"Q: {i} + {i}?", f"Add {i} and {i}."],
                 "continuations": [f"It is {2 * i}."], "tags": {"split": "train" if i < 4 else "test"}} for i in range(6)]
    path = clusters_file(tmp_path, clusters)
    out = tmp_path / "run"
    sets = [f"model.name_or_path={tiny_folder}", "model.device=cpu", f"data.train_file={path}",
            f"train.output_dir={out}", "train.max_steps=2", "train.per_device_train_batch_size=2",
            "train.report_to=tensorboard", "train.act_weight=0.5"]
    rc, stdout, err = run_cli(capsys, "train", *[a for s in sets for a in ("--set", s)])
    assert rc == 0, err
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under output_dir/runs"
    tags = set()
    for folder in {e.parent for e in events}:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss/output", "train/loss/act", "train/learning_rate"} <= tags, tags
    assert {"train/heldout_before/output_js", "train/heldout_after/output_js"} <= tags, tags
