"""The Python API: `import coherentize` is light, every exported name resolves, and the README's example
(examples/python_api.py: clusters -> ConsistencyTrainer on a datasets.Dataset -> evaluation) runs on a tiny model."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import coherentize as ch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "python_api.py"


def test_import_is_light_and_every_export_resolves():
    code = "import sys, coherentize; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name in ch.__all__:
        assert getattr(ch, name) is not None, name
    with pytest.raises(AttributeError):
        ch.no_such_name


def test_readme_python_api_section_is_the_example_script():
    readme = (ROOT / "README.md").read_text()
    assert "## Python API" in readme
    assert EXAMPLE.read_text().strip() in readme
    assert len(EXAMPLE.read_text().strip().splitlines()) < 30 + 3  # the "under 30 lines" (+ imports)


def test_trainer_and_collator_take_a_datasets_dataset(tiny_tok, tiny_lm):
    from datasets import Dataset

    rows = Dataset.from_list([{"id": "a", "anchor": "What is two plus two?",
                               "variations": [{"prompt": "Q: two plus two?", "family": "wrapper"},
                                              {"prompt": "2+2?", "family": "formatting"}]}])
    clusters = ch.clusters_from_dataset(rows)
    assert clusters[0].families == ["anchor", "wrapper", "formatting"]
    ds = ch.examples_dataset(rows, {"a": "Four."}, tiny_tok)
    assert isinstance(ds, Dataset) and ds.column_names == ["cluster_id", "anchor_ids", "variant_ids", "response_ids"]
    want = ch.build_examples(clusters, {"a": "Four."}, tiny_tok, True)
    collate = ch.ConsistencyCollator(tiny_tok.pad_token_id)
    got, ref = collate([ds[0]]), collate(want)
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in got)


def test_the_readme_example_runs(tmp_path, monkeypatch, tiny_folder):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(tiny_folder)])
    ns = runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert ns["trainer"].state.global_step == 10
    assert len(ns["train"]) >= 8 and {"loss/output", "loss/act"} <= set(ns["trainer"].state.log_history[0])
    moved = [n for n, p in ns["model"].named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved, "LoRA weights did not move"
    results = ns["results"]["suites"]
    assert results["overrefusal"]["refusal_rate"]["n"] == 8 and results["jailbreak"]["families"]
    assert (tmp_path / "runs" / "python_api" / "eval" / "results.json").is_file()
