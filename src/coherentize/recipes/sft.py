"""Plain supervised fine-tuning on (prompt, response) pairs with the transformers Trainer.

Used to build model organisms (organism.py). Loss on response tokens only; the prompt is rendered exactly as in
consistency training and evaluation (chat.encode), so the three agree on what the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Trainer, TrainingArguments

from coherentize.chat import Prompt, encode


@dataclass
class SFTPair:
    prompt: Prompt
    response: str


def tokenize_pairs(pairs: list[SFTPair], tokenizer, chat: bool, max_length: int = 256) -> list[dict]:
    """input_ids = prompt + response (+ EOS); labels = -100 on the prompt."""
    rows = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for p in pairs:
        prompt = encode(tokenizer, p.prompt, chat)
        resp = tokenizer(p.response, add_special_tokens=False)["input_ids"] + eos
        ids = (prompt + resp)[-max_length:]
        labels = ([-100] * len(prompt) + resp)[-max_length:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


@dataclass
class SFTCollator:
    """Right-pads input_ids/labels; attention mask from lengths."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        t = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), t), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), t), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_sft(model, tokenizer, pairs: list[SFTPair], chat: bool, args: TrainingArguments, max_length: int = 256):
    """Fine-tune model (a PeftModel or a full model) on pairs; returns the Trainer (its log history included)."""
    rows = tokenize_pairs(pairs, tokenizer, chat, max_length)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=SFTCollator(tokenizer.pad_token_id))
    trainer.train()
    return trainer
