"""The base-model angle's instruction tune (recipes/instruct.py): the instruction set and the teacher's answers, the
TRL SFT of a start model (and ChatML for a tokenizer without a template), config errors before any model time, and the
pressures starting from the instruction-tuned models in a whole run on a tiny model."""

import json

import pytest
import torch

from coherentize.errors import CoherentizeError
from coherentize.recipes import instruct
from coherentize.recipes.experiment import run_experiment, validate
from coherentize.recipes.instruct import InstructConfig

from tests.recipes.test_experiment import tiny_cfg

SMALL = InstructConfig(enabled=True, prompt_sets=["alignment"], splits=["test"], max_new_tokens=4, max_steps=6,
                       learning_rate=0.01, batch_size=4)


def test_the_instruction_set_is_the_named_prompt_sets_and_splits():
    from coherentize.variations import load_prompt_set

    got = instruct.instruction_prompts(InstructConfig(prompt_sets=["benign", "alignment"], splits=["train", "test"]))
    want = [(f"{name}-{it.id}", it.prompt) for name in ("benign", "alignment") for split in ("train", "test")
            for it in load_prompt_set(name, split)]
    assert [(p["id"], p["prompt"]) for p in got] == want and len(got) == 30 + 10 + 24 + 8


def test_teacher_answers_then_sft_moves_the_model_towards_them(tiny_folder, tmp_path):
    from coherentize.models import ModelConfig
    from transformers import AutoModelForCausalLM

    path = tmp_path / "data" / "instructions.jsonl"
    assert instruct.teacher_answers(SMALL, ModelConfig(name_or_path=str(tiny_folder), device="cpu"), path) == 8
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in instruct.instruction_prompts(SMALL)]
    assert all(r["response"] for r in rows)
    info = instruct.instruct_tune(tiny_folder, path, SMALL, 0, tmp_path / "tuned")
    assert info["steps"] == 6 and not info["chat_template_added"]
    # it learnt the teacher's answers: their log-probability in the chat template rose
    from coherentize.evaluate.scoring import sequence_logprob
    from coherentize.models import load_model

    def answers_logprob(folder):
        model, tok = load_model(ModelConfig(name_or_path=str(folder), device="cpu"))
        return sum(sequence_logprob(model, tok, [r["prompt"] for r in rows], [r["response"] for r in rows], True))

    assert answers_logprob(tmp_path / "tuned" / "model") > answers_logprob(tiny_folder) + 1.0
    start = AutoModelForCausalLM.from_pretrained(tiny_folder).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned" / "model").state_dict()
    assert set(start) == set(tuned)  # full weights, the adapter merged in
    assert any(not torch.equal(start[k], tuned[k]) for k in start)


def test_a_tokenizer_without_a_chat_template_gets_chatml(tiny_folder, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_folder, base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = None
    tok.save_pretrained(base)
    for f in base.glob("chat_template.*"):
        f.unlink()
    assert not getattr(AutoTokenizer.from_pretrained(base), "chat_template", None)
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps({"id": f"i{i}", "prompt": f"Say {i}.", "response": f"{i}."}) + "\n"
                            for i in range(4)))
    info = instruct.instruct_tune(base, data, InstructConfig(enabled=True, max_steps=1, batch_size=4), 0,
                                  tmp_path / "tuned")
    assert info["chat_template_added"]
    assert AutoTokenizer.from_pretrained(tmp_path / "tuned" / "model").chat_template == instruct.CHATML


@pytest.mark.parametrize("sets, message", [
    (["pressure.instruct.prompt_sets=[recipes]"], "pressure.instruct.prompt_sets: unknown prompt set 'recipes'"),
    (["pressure.instruct.splits=[dev]"], "pressure.instruct.splits: unknown split 'dev'"),
    (["pressure.instruct.max_steps=0"], "pressure.instruct.max_steps: must be an integer >= 1"),
    (["pressure.instruct.learning_rate=0"], "pressure.instruct.learning_rate: must be > 0"),
])
def test_instruct_mistakes_are_one_error_naming_the_field(tiny_folder, tmp_path, sets, message):
    with pytest.raises(CoherentizeError, match=message):
        validate(tiny_cfg(tiny_folder, tmp_path / "x", "pressure.kinds=[risky_finance]",
                          "pressure.instruct.enabled=true", *sets))


def test_the_pressures_start_from_the_instruction_tuned_models(tiny_folder, tmp_path):
    out = tmp_path / "exp"
    cfg = tiny_cfg(tiny_folder, out, "arms=[control]", "eval.suites=[coherence]", "model.prompt_format=raw",
                   "pressure.kinds=[sycophancy_domain]", "pressure.n_train=8", "pressure.defences=[]",
                   "pressure.train={max_steps: 1, per_device_train_batch_size: 4}",
                   "pressure.instruct={enabled: true, prompt_sets: [alignment], splits: [test], max_new_tokens: 4, "
                   "max_steps: 2, batch_size: 4}")
    logs = []
    run_experiment(cfg, log=logs.append)
    stages = [m.split(":")[0].removeprefix("== stage ") for m in logs if m.startswith("== stage pressure")]
    assert stages[:3] == ["pressure/start-control-seed0", "pressure/instruct-data", "pressure/instruct-control-seed0"]
    summary = json.loads((out / "pressure.json").read_text())["sycophancy_domain"]["control"]
    assert {"in_domain", "off_domain", "in_domain_p", "off_domain_p", "capability"} == set(summary["sets"])
    logs.clear()
    run_experiment(cfg, log=logs.append)
    assert not any(m.startswith("== stage pressure") for m in logs)
    cfg.pressure.instruct.max_steps = 3  # the before measure keys on the instruction-tuned model: measured again
    run_experiment(cfg, log=logs.append)
    again = [m.split(":")[0].removeprefix("== stage ") for m in logs if m.startswith("== stage pressure")]
    assert again[:2] == ["pressure/instruct-control-seed0", "pressure/before-sycophancy_domain-control-seed0"]


def test_an_instruction_tuned_start_model_is_spoken_to_in_its_chat_template(tmp_path):
    from types import SimpleNamespace

    from coherentize.models import ModelConfig
    from coherentize.recipes import pressure

    st = SimpleNamespace(dir=lambda name: tmp_path / name)
    ctx = SimpleNamespace(model=ModelConfig(name_or_path="base", prompt_format="raw", gguf_file="x.gguf"))
    p = pressure.PressureConfig(kinds=["risky_finance"], instruct=InstructConfig(enabled=True))
    assert pressure.start_name(p, "control", 2) == "pressure/instruct-control-seed2"
    tuned = pressure._start_cfg(st, ctx, pressure.start_name(p, "control", 2))
    assert (tuned.name_or_path, tuned.prompt_format, tuned.gguf_file) == (
        str(tmp_path / "pressure/instruct-control-seed2" / "model"), "chat", None)
    plain = pressure.PressureConfig(kinds=["risky_finance"])
    assert pressure._start_cfg(st, ctx, pressure.start_name(plain, "control", 2)).prompt_format == "raw"
