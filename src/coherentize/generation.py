"""Batched generation with left padding and the KV cache: the one place the toolkit generates text locally."""

from __future__ import annotations

from typing import Sequence

import torch

from coherentize.chat import Prompt, render


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    chat: bool,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    progress=None,
) -> list[str]:
    """Generate one completion per prompt, in batches sorted by length (less padding), returned in input order.

    Greedy unless do_sample. progress: an optional callable called with the number of prompts finished per batch.
    """
    if not prompts:
        return []
    texts = [render(tokenizer, p, chat) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out: list[str | None] = [None] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=not chat
            ).to(model.device)
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, do_sample=do_sample)
            if do_sample:
                if gen is not None:
                    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                kwargs.update(temperature=temperature, top_p=top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            seqs = model.generate(**enc, **kwargs)
            new = seqs[:, enc["input_ids"].shape[1] :]
            for j, i in enumerate(idx):
                out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
            if progress is not None:
                progress(len(idx))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out  # type: ignore[return-value]
