"""executor: ray runs the experiment's jobs as tasks of a real Ray cluster (a local one started here) and gives the
per-item results of the in-process run. Skipped where Ray is not installed (pip install 'ray>=2.40')."""

import json

import pytest

from coherentize.config import apply_overrides, from_dict
from coherentize.recipes.experiment import ExperimentConfig, run_experiment
from tests.recipes.test_experiment import expected_progress

ray = pytest.importorskip("ray")


def cfg(folder, out, *extra):
    sets = [f"out_dir={out}", f"model.name_or_path={folder}", "model.device=cpu", "organism.enabled=false",
            "variations.prompt_sets=[benign]", "variations.max_prompts=3", "variations.families=[wrapper]",
            "arms=[control,output-kl+activation]", "seeds=[0,1]", "train.max_steps=2", "train.act_layers=[1]",
            "train.per_device_train_batch_size=2", "train.learning_rate=0.01", "train.disable_tqdm=true",
            "response_max_new_tokens=4", "lora.r=2", "lora.alpha=4", "eval.suites=[overrefusal,coherence]",
            "eval.n_overrefusal=3", "eval.n_clusters=2", "eval.max_new_tokens=4", "eval.n_boot=50",
            "eval.embed_model=none", *extra]
    return from_dict(ExperimentConfig, apply_overrides({}, sets))


def per_item(out):
    return {p.parent.name.rsplit("-", 1)[0]: json.loads(p.read_text())["per_item"]
            for p in sorted(out.glob("stages/**/results.json"))}


@pytest.fixture
def local_ray(monkeypatch):
    import shutil
    import tempfile

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token written into the home folder
    temp = tempfile.mkdtemp(prefix="cz-ray-")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def test_jobs_on_ray_give_the_results_of_one_process(tiny_folder, tmp_path, local_ray):
    here, on_ray = tmp_path / "here", tmp_path / "ray-run"
    run_experiment(cfg(tiny_folder, here), log=lambda *a: None)
    logs = []
    run_experiment(cfg(tiny_folder, on_ray, "executor=ray", "jobs=2", "ray.cpus_per_job=1"), log=logs.append,
                   data_into=tmp_path / "ray_data")
    assert "-- 9 jobs on Ray, 2 at a time, 1 CPU(s) and 0 GPU(s) each" in logs
    assert sum(m.startswith("   job ") for m in logs) == 9
    # --data-into: each finished evaluation's data arrive (and are logged here) as its task ends
    assert sum(m.startswith("   per-item data so far:") for m in logs) == expected_progress(logs)
    names = lambda out: sorted(str(p.relative_to(out)) for p in out.glob("stages/**/done.json"))  # noqa: E731
    assert names(on_ray) == names(here)
    a, b = per_item(here), per_item(on_ray)
    assert a.keys() == b.keys() and len(a) == 5
    for stage in a:
        for metric, values in a[stage].items():
            assert b[stage][metric] == pytest.approx(values, rel=1e-4, abs=1e-6), (stage, metric)


def test_the_narrow_pressures_run_as_ray_tasks_with_the_measures_of_one_process(tiny_folder, tmp_path, local_ray):
    from coherentize.report.pressure import read_items

    sets = ("arms=[control]", "seeds=[0]", "eval.suites=[coherence]", "pressure.kinds=[risky_finance]",
            "pressure.n_train=4", "pressure.defences=[kl_leash]",
            "pressure.train={max_steps: 1, per_device_train_batch_size: 4, learning_rate: 0.05}")
    here, on_ray = tmp_path / "here", tmp_path / "ray-run"
    run_experiment(cfg(tiny_folder, here, *sets), log=lambda *a: None)
    logs = []
    run_experiment(cfg(tiny_folder, on_ray, *sets, "executor=ray", "jobs=2", "ray.cpus_per_job=1"), log=logs.append)
    # the measures before the control's fine-tunes, and each condition's fine-tune with its measures after
    assert "-- 3 jobs on Ray, 2 at a time, 1 CPU(s) and 0 GPU(s) each" in logs
    key = lambda r: (r["condition"], r["when"], r["set"])  # noqa: E731
    a = {key(r): r["values"] for r in read_items(here / "pressure_items.csv")}
    b = {key(r): r["values"] for r in read_items(on_ray / "pressure_items.csv")}
    assert a.keys() == b.keys() and len(a) == 2 * 2 * 2
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k


def test_a_failing_job_on_ray_raises_its_own_error(tiny_folder, tmp_path, local_ray):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    c = cfg(folder, tmp_path / "fail", "executor=ray", "jobs=2", "ray.cpus_per_job=1")
    run_experiment(c, only="variations", log=lambda *a: None)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()  # every job fails to load the model
    with pytest.raises(Exception) as e:
        run_experiment(c, log=lambda *a: None)
    assert "model" in str(e.value).lower()
    assert not list((tmp_path / "fail").glob("stages/eval/*/done.json"))
