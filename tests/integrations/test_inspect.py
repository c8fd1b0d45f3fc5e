"""The probes as inspect_ai tasks, run by the real inspect_ai offline: on a tiny local model folder with
`inspect eval coherentize/<task> --model hf/local` (the same greedy answers as coherentize's own generation), and
in-process on inspect's mock model to check that the scorers use the project's refusal judge."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("inspect_ai")

from inspect_ai import eval as inspect_eval  # noqa: E402
from inspect_ai.model import ModelOutput, get_model  # noqa: E402

from coherentize.evaluate import judges  # noqa: E402
from coherentize.integrations import inspect_tasks  # noqa: E402


@pytest.fixture(autouse=True)
def no_tiktoken_download(monkeypatch, tmp_path):
    """inspect's mock model counts tokens with tiktoken, whose encoding is a download: count words instead. inspect
    keeps traces and caches in the user's data and cache folders: put them in the test's folder."""
    from inspect_ai.model import ModelAPI

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    async def words(self, text):
        return max(1, len(text.split()))

    monkeypatch.setattr(ModelAPI, "count_text_tokens", words)


def mock(*replies):
    return get_model("mockllm/model", custom_outputs=[ModelOutput.from_content("mockllm/model", r) for r in replies],
                     memoize=False)


def run(task, model, tmp_path):
    (log,) = inspect_eval(task, model=model, log_dir=str(tmp_path / "logs"), display="none")
    assert log.status == "success", log.error
    return log


def metric(log, scorer, name="mean"):
    return next(s for s in log.results.scores if s.name == scorer).metrics[name].value


def test_scorers_use_the_project_judge(tmp_path):
    replies = ["I'm sorry, but I can't help with that.", "Sure, here is an overview of the topic."]
    assert [judges.is_refusal(r) for r in replies] == [True, False]
    log = run(inspect_tasks.direct_refusal(n=2), mock(*replies), tmp_path)
    assert metric(log, "refusal") == pytest.approx(0.5)
    log = run(inspect_tasks.overrefusal(n=2), mock(replies[0], replies[0]), tmp_path)
    assert metric(log, "refusal") == pytest.approx(1.0)
    log = run(inspect_tasks.jailbreak(n=2, sources="project", families="style_pirate,fiction_story"),
              mock(*(replies * 2)), tmp_path)
    assert metric(log, "attack_success") == pytest.approx(0.5)
    assert {"style_pirate", "fiction_story"} <= set(next(s for s in log.results.scores).metrics)


def test_sycophancy_scores_the_first_letter(tmp_path):
    task = inspect_tasks.sycophancy(n=2, cue=True)
    samples = list(task.dataset)
    replies = [f"({s.metadata['answer']}) is right." for s in samples[:1]] + [f"{samples[1].metadata['cue']}."]
    log = run(task, mock(*replies), tmp_path)
    assert metric(log, "chose_answer") == pytest.approx(0.5)
    assert metric(log, "chose_cue") == pytest.approx(0.5)
    assert "Answer with the letter" in samples[0].input and "I'm fairly sure" in samples[0].input


def test_first_letter():
    f = inspect_tasks.first_letter
    assert [f("(B) Paris", 4), f("B. Paris", 4), f("The answer is C", 4), f("Paris", 4), f("E)", 4)] == \
        ["B", "B", "C", None, None]


@pytest.mark.skipif(shutil.which("inspect", path=os.path.dirname(sys.executable)) is None,
                    reason="inspect-ai is not installed (pip install -e '.[test]')")
def test_real_inspect_eval_on_an_exported_model_folder(tmp_path, tiny_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from coherentize.generation import generate

    from coherentize.cli import main

    exported = tmp_path / "exported"  # the model as a user hands it to inspect: coherentize export's folder
    assert main(["export", "--model", str(tiny_folder), "--out", str(exported)]) == 0
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "INSPECT_LOG_DIR": str(tmp_path / "logs"), "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    cmd = [os.path.join(os.path.dirname(sys.executable), "inspect"), "eval", "coherentize/direct_refusal",
           "coherentize/overrefusal", "-T", "n=2", "--model", "hf/local", "-M", f"model_path={exported}",
           "-M", "device=cpu", "-M", "do_sample=false", "--max-tokens", "8", "--display", "plain",
           "--log-format", "json"]
    if not any(ep.name == "coherentize" for ep in __import__("importlib.metadata").metadata.entry_points(group="inspect_ai")):
        cmd[2:4] = [f"{inspect_tasks.__file__}@direct_refusal", f"{inspect_tasks.__file__}@overrefusal"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    logs = [json.loads(p.read_text()) for p in sorted((tmp_path / "logs").glob("*.json"))]
    assert len(logs) == 2 and all(log["status"] == "success" for log in logs)
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_folder), AutoTokenizer.from_pretrained(tiny_folder)
    for log in logs:
        samples = log["samples"]
        assert len(samples) == 2
        ours = generate(model, tok, [s["input"] for s in samples], True, 8, 4)
        assert [s["output"]["choices"][0]["message"]["content"] for s in samples] == ours
        assert [s["scores"]["refusal"]["value"] for s in samples] == [float(judges.is_refusal(o)) for o in ours]
