"""The train job on a tiny model folder: responses cached, adapter + merged folder saved, metrics written."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from coherentize.clusters import Cluster, Variation, write_clusters
from coherentize.config import apply_overrides, from_dict
from coherentize.recipes.train_job import TrainJob, run_training
from coherentize.testing import tiny_model


@pytest.fixture
def setup(tmp_path, tiny_tok):
    folder = tmp_path / "tiny"
    tiny_model(tiny_tok, seed=4).save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    clusters = [Cluster(f"c{i}", f"Tell me about topic {i}.", [Variation(f"Q: topic {i}?", "qa"),
                        Variation(f"Please, topic {i}.", "wrapper")], [], {"split": "train" if i < 6 else "test"})
                for i in range(8)]
    write_clusters(tmp_path / "c.jsonl", clusters)
    return folder, tmp_path / "c.jsonl"


def job(folder, clusters, out, *extra):
    return from_dict(TrainJob, apply_overrides({}, [
        f"model.name_or_path={folder}", "model.device=cpu", f"data.train_file={clusters}",
        "data.response_max_new_tokens=4", f"train.output_dir={out}", "train.max_steps=3", "train.disable_tqdm=true",
        "train.per_device_train_batch_size=2", "train.act_weight=1.0", "train.act_layers=[1]", "lora.r=2",
        "lora.alpha=4", *extra]))


def test_train_job_writes_model_merged_folder_and_metrics(setup, tmp_path):
    folder, clusters = setup
    out = tmp_path / "out"
    metrics = run_training(job(folder, clusters, out, "save_merged=true"))
    assert metrics["n_train_clusters"] == 6 and metrics["n_heldout_clusters"] == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["heldout_after"]["mean"]) >= {"output_js", "kl_to_original", "act_l2/layer1"}
    assert saved["heldout_before"]["mean"]["kl_to_original"] is None  # no reference before training
    responses = [json.loads(l) for l in (out / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 8
    # The merged folder is a plain transformers model equal to base + adapters.
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    from peft import PeftModel

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), out / "model")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(folder)(input_ids=ids).logits
    assert not torch.allclose(merged(input_ids=ids).logits, base)


def test_full_fine_tuning_saves_a_full_model(setup, tmp_path):
    folder, clusters = setup
    out = tmp_path / "full"
    run_training(job(folder, clusters, out, "lora.enabled=false"))
    assert (out / "model" / "model.safetensors").is_file() and not (out / "model" / "adapter_config.json").exists()


def test_overlapping_heldout_is_an_error(setup, tmp_path):
    folder, clusters = setup
    from coherentize.errors import CoherentizeError

    with pytest.raises(CoherentizeError, match="share prompts with the training clusters"):
        run_training(job(folder, clusters, tmp_path / "o", "data.eval_split=train"))


def test_full_fine_tuning_gets_its_reference_loaded_from_disk_not_copied(setup, tmp_path, monkeypatch):
    # Under DeepSpeed ZeRO-3 the trainer cannot deep-copy a partitioned model: the job loads theta0 a second time.
    from coherentize.recipes import train_job

    seen = {}

    class Spy(train_job.ConsistencyTrainer):
        def __init__(self, *a, ref_model=None, **k):
            seen["ref"] = ref_model
            super().__init__(*a, ref_model=ref_model, **k)
            seen["trainer"] = self

    monkeypatch.setattr(train_job, "ConsistencyTrainer", Spy)
    folder, clusters = setup
    run_training(job(folder, clusters, tmp_path / "full", "lora.enabled=false"))
    ref, trained = seen["ref"], seen["trainer"].model
    assert ref is not None and seen["trainer"].ref_model is ref
    original = AutoModelForCausalLM.from_pretrained(folder)
    for (name, p), (_, q) in zip(ref.named_parameters(), original.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)  # theta0, untouched by training
    assert any(not torch.equal(p, q) for p, q in zip(trained.parameters(), original.parameters()))


def test_heldout_examples_per_cluster_caps_the_measurement(setup, tmp_path):
    folder, clusters = setup  # 2 held-out clusters of 2 variations: 2 examples each with members_per_cluster=2
    every = run_training(job(folder, clusters, tmp_path / "a", "train.members_per_cluster=2", "train.max_steps=1"))
    one = run_training(job(folder, clusters, tmp_path / "b", "train.members_per_cluster=2", "train.max_steps=1",
                           "data.heldout_examples_per_cluster=1"))
    assert every["heldout_before"]["mean"]["n_examples"] == 4
    assert one["heldout_before"]["mean"]["n_examples"] == 2
    # the kept example of each cluster is its first one, measured the same way
    firsts = every["heldout_before"]["per_example"]["output_js"][0::2]
    assert one["heldout_before"]["per_example"]["output_js"] == pytest.approx(firsts, rel=1e-5)


def test_heldout_before_is_measured_once_per_model_and_examples(setup, tmp_path, monkeypatch):
    from coherentize.recipes import train_job

    folder, clusters = setup
    calls = []
    measure = train_job.measure_consistency
    monkeypatch.setattr(train_job, "measure_consistency", lambda *a, **k: calls.append(a[1]) or measure(*a, **k))
    shared = f"data.responses_cache={tmp_path / 'shared' / 'responses.jsonl'}"
    base = ("train.max_steps=1", shared)
    first = run_training(job(folder, clusters, tmp_path / "a", *base))
    other_arm = run_training(job(folder, clusters, tmp_path / "b", *base, "train.act_weight=0", "train.output_weight=1"))
    assert [ref is None for ref in calls] == [True, False, False]  # before once; after for each job
    assert other_arm["heldout_before"] == first["heldout_before"]
    # a job on other examples (other layers measured) or without a shared cache measures again
    run_training(job(folder, clusters, tmp_path / "c", *base, "train.act_layers=[0]"))
    run_training(job(folder, clusters, tmp_path / "d", "train.max_steps=1"))
    assert [ref is None for ref in calls[3:]] == [True, False, True, False]
    # what is read back equals a fresh measurement
    fresh = run_training(job(folder, clusters, tmp_path / "e", "train.max_steps=1"))
    assert fresh["heldout_before"] == first["heldout_before"]
