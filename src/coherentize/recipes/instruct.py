"""The instruction tune of the base-model angle (issue 26, item 3): coherentize on raw text before any instruction
tuning, then a small instruction tune, then the narrow pressures, and compare how the pressure acts on a coherent vs
an incoherent starting point.

With ``pressure.instruct.enabled``, every arm-seed's start model (the arm's model trained on raw text, its adapter
merged: recipes/pressure.py) gets the same supervised instruction tune through TRL's ``SFTTrainer`` before the
pressures, and the pressures then start from the instruction-tuned model and speak to it in its chat template:

- ``pressure/instruct-data``: the instruction set, prompt-completion conversations. Prompts: the packaged prompt sets
  ``prompt_sets`` (``splits`` of them; data/prompts/README.md), answers: the ``teacher``'s greedy answers in its chat
  template (default: the experiment's own model; for a base model, point it at an instruct model: the Alpaca recipe of
  learning to follow instructions from a stronger model's answers). The same set for every arm-seed.
- ``pressure/instruct-<arm>-seed<s>``: the SFT (``SFTTrainer``: loss on the completion tokens only, a LoRA adapter
  through peft's ``LoraConfig`` when ``lora``, merged into full weights after), from the arm-seed's start model, seed
  s. A tokenizer without a chat template gets ChatML (``CHATML``) and is saved with it.

Limits: the prompt sets are the project's own (everyday and alignment questions), a few dozen prompts, so this is an
instruction tune in shape, not in size; the teacher's answers are cut at ``max_new_tokens``. With the packaged
SmolLM2-135M-Instruct as its own teacher (configs/counterweight_raw.yaml: no base model ships offline) the tune
mostly restores the chat behaviour the raw-text arms trained around; say so when reading it. one_frame's training
targets are the experiment's own model's answers in its own format (raw text here), not the instruction-tuned
model's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from coherentize.errors import CoherentizeError

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
"""The chat template given to a tokenizer that has none (a base model's)."""


@dataclass
class InstructConfig:
    """The instruction tune between the arms and the narrow pressures (off: enabled false)."""

    enabled: bool = False
    """Instruction-tune every arm-seed's start model before the pressures (the base-model angle)."""
    prompt_sets: list[str] = field(default_factory=lambda: ["benign", "alignment"])
    """Packaged prompt sets of the instructions (data/prompts/)."""
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    """Their splits taken (train, validation, test)."""
    teacher: str | None = None
    """Model whose chat answers are the targets (a packaged name or a folder); None: the experiment's model."""
    max_new_tokens: int = 64
    """Tokens of each teacher answer."""
    max_steps: int = 40
    """SFT optimizer steps."""
    learning_rate: float = 2e-4
    """SFT learning rate (constant)."""
    batch_size: int = 8
    """SFT examples per step, and the teacher's generation batch."""
    lora: bool = True
    """Train a LoRA adapter (r 16 on the attention projections, merged after) instead of every weight."""


def validate(cfg: InstructConfig) -> None:
    """The instruct section, before any stage runs: one error naming the field."""
    if not cfg.enabled:
        return
    from coherentize.variations.prompt_sets import prompt_set_path

    for name in cfg.prompt_sets:
        try:
            prompt_set_path(name)
        except CoherentizeError as e:
            raise CoherentizeError(f"pressure.instruct.prompt_sets: {e}") from None
    for s in cfg.splits:
        if s not in ("train", "validation", "test"):
            raise CoherentizeError(f"pressure.instruct.splits: unknown split {s!r}; use train, validation, test.")
    for name in ("max_new_tokens", "max_steps", "batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise CoherentizeError(f"pressure.instruct.{name}: must be an integer >= 1, got {getattr(cfg, name)!r}.")
    if not cfg.learning_rate > 0:
        raise CoherentizeError(f"pressure.instruct.learning_rate: must be > 0, got {cfg.learning_rate!r}.")
    if not instruction_prompts(cfg):
        raise CoherentizeError(f"pressure.instruct: no prompts in {cfg.prompt_sets} {cfg.splits}.")


def instruction_prompts(cfg: InstructConfig) -> list[dict]:
    """[{"id", "prompt"}] of the instruction set, in the prompt sets' order."""
    from coherentize.variations import load_prompt_set

    return [{"id": f"{name}-{it.id}", "prompt": it.prompt}
            for name in cfg.prompt_sets for split in cfg.splits for it in load_prompt_set(name, split)]


def teacher_answers(cfg: InstructConfig, model_cfg, path: Path) -> int:
    """The teacher's greedy chat answers to the instruction prompts, one {"id", "prompt", "response"} a line at path;
    returns how many. model_cfg: the experiment's model (the teacher unless cfg.teacher names another)."""
    from coherentize.generation import generate
    from coherentize.models import load_model

    teacher = model_cfg if cfg.teacher is None else dataclasses.replace(
        model_cfg, name_or_path=cfg.teacher, gguf_file=None, prompt_format="chat")
    model, tok = load_model(teacher)
    if not getattr(tok, "chat_template", None):
        raise CoherentizeError(f"pressure.instruct.teacher: {teacher.name_or_path!r} has no chat template to answer "
                               "instructions in; name an instruct model.")
    prompts = instruction_prompts(cfg)
    texts = generate(model, tok, [p["prompt"] for p in prompts], True, max_new_tokens=cfg.max_new_tokens,
                     batch_size=cfg.batch_size, desc="teacher answers")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({**p, "response": t.strip() or "."}) + "\n" for p, t in zip(prompts, texts)))
    return len(prompts)


def instruct_tune(start: Path, data: Path, cfg: InstructConfig, seed: int, out: Path) -> dict:
    """SFT of the model folder start on data's conversations (TRL's SFTTrainer, completion tokens only); writes the
    tuned model (full weights) and its tokenizer to out/model and returns {"first_loss", "last_loss", "steps",
    "chat_template_added"}."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                  "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
    tok = AutoTokenizer.from_pretrained(start)
    added = not getattr(tok, "chat_template", None)
    if added:
        tok.chat_template = CHATML
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(start)
    args = SFTConfig(output_dir=str(out / "sft"), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
                     lr_scheduler_type="constant", per_device_train_batch_size=cfg.batch_size, seed=seed,
                     data_seed=seed, bf16=False, gradient_checkpointing=False, save_strategy="no", logging_steps=1,
                     report_to="none", disable_tqdm=True, max_length=512, completion_only_loss=True,
                     use_cpu=not torch.cuda.is_available())
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             task_type="CAUSAL_LM") if cfg.lora else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft_config)
    trainer.train()
    tuned = trainer.model.merge_and_unload() if cfg.lora else trainer.model
    tuned.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "steps": trainer.state.global_step, "chat_template_added": added}
