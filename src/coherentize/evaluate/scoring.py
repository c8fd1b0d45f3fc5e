"""Teacher-forced forward passes that every probe shares: log-probabilities of given continuations, next-token
distributions, and last-prompt-token residual activations.

Sequences are right-padded (so position ids start at 0 for every row and the causal mask makes the padding
irrelevant), sorted by length, and run in batches without gradients.
"""

from __future__ import annotations

from typing import Sequence

import torch

from coherentize.chat import Prompt, encode
from coherentize.losses import log_probs


def encode_pairs(tokenizer, prompts: Sequence[Prompt], continuations: Sequence[str], chat: bool):
    """[(prompt ids, continuation ids)]: the continuation tokenised on its own, without special tokens."""
    out = []
    for p, c in zip(prompts, continuations):
        pid = encode(tokenizer, p, chat)
        cid = tokenizer(c, add_special_tokens=False)["input_ids"] if c else []
        out.append((pid, cid))
    return out


@torch.no_grad()
def _forward_batches(model, pad_id: int, seqs: list[tuple[list[int], list[int]]], batch_size: int, hidden: bool):
    """Yield (index, logits (T, V) at the positions predicting the continuation — or the next token when the
    continuation is empty —, hidden states tuple or None) for every sequence."""
    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    device = model.device
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        full = [seqs[i][0] + seqs[i][1] for i in idx]
        width = max(len(f) for f in full)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, f in enumerate(full):
            ids[j, : len(f)] = torch.tensor(f)
            mask[j, : len(f)] = 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=hidden)
        for j, i in enumerate(idx):
            np_, nc = len(seqs[i][0]), len(seqs[i][1])
            rows = slice(np_ - 1, np_ + nc - 1) if nc else slice(np_ - 1, np_)
            hs = tuple(h[j] for h in out.hidden_states) if hidden else None
            yield i, out.logits[j, rows], hs, np_


def continuation_logprobs(model, tokenizer, prompts, continuations, chat: bool, batch_size: int = 16):
    """Per pair, the (T, V) float32 next-token log-probabilities at the T positions of the continuation."""
    seqs = encode_pairs(tokenizer, prompts, continuations, chat)
    out: list = [None] * len(seqs)
    for i, logits, _, _ in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size, hidden=False):
        out[i] = log_probs(logits).cpu()
    return out


def sequence_logprob(model, tokenizer, prompts, continuations, chat: bool, batch_size: int = 16) -> list[float]:
    """Per pair, log P(continuation | prompt): the sum of the continuation tokens' log-probabilities."""
    seqs = encode_pairs(tokenizer, prompts, continuations, chat)
    out = [0.0] * len(seqs)
    for i, logits, _, _ in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size, hidden=False):
        target = torch.tensor(seqs[i][1], device=logits.device)
        out[i] = float(log_probs(logits).gather(-1, target[:, None]).sum())
    return out


def next_token_logprobs(model, tokenizer, prompts, chat: bool, batch_size: int = 16) -> torch.Tensor:
    """(N, V) log-probabilities of the first response token after each prompt."""
    seqs = [(encode(tokenizer, p, chat), []) for p in prompts]
    rows: list = [None] * len(seqs)
    for i, logits, _, _ in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size, hidden=False):
        rows[i] = log_probs(logits[0:1]).cpu()[0]
    return torch.stack(rows)


def last_token_hidden(model, tokenizer, prompts, chat: bool, batch_size: int = 16) -> torch.Tensor:
    """(N, L, H) residual stream after each of the L blocks (embedding layer excluded) at the last prompt token."""
    seqs = [(encode(tokenizer, p, chat), []) for p in prompts]
    rows: list = [None] * len(seqs)
    for i, _, hs, n in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size, hidden=True):
        rows[i] = torch.stack([h[n - 1] for h in hs[1:]]).float().cpu()
    return torch.stack(rows)


def text_token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_tokens: int = 256):
    """Per text, (T-1, V) log-probabilities predicting tokens 2..T of the raw text (no chat template), and the
    (T-1,) target ids: for perplexity and KL to a reference model on neutral text."""
    seqs = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens]
        seqs.append((ids[:1], ids[1:]))
    out: list = [None] * len(seqs)
    for i, logits, _, _ in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size, hidden=False):
        out[i] = (log_probs(logits).cpu(), torch.tensor(seqs[i][1]))
    return out


def letter_forms(letter: str) -> list[str]:
    """Ways a response can open with a choice letter: 'A', ' A', '(A'. Their token sequences begin differently, so
    their probabilities add up without double counting."""
    return [letter, f" {letter}", f"({letter}"]


def mc_choice(model, tokenizer, prompts, n_choices: Sequence[int], chat: bool, batch_size: int = 16) -> list[str]:
    """The letter the model puts most probability on as the opening of its response, per multiple-choice prompt:
    argmax over letters of log sum P(form | prompt) over letter_forms (teacher-forced, exact for multi-token forms)."""
    k_max = max(n_choices)
    letters = "ABCDEFGH"[:k_max]
    forms = [f for c in letters for f in letter_forms(c)]
    lp = openings_logprob(model, tokenizer, prompts, forms, chat, max(1, batch_size // 2))  # (N, k_max * 3)
    per_letter = torch.logsumexp(lp.view(len(prompts), k_max, 3), -1)  # (N, k_max)
    return [letters[int(row[:k].argmax())] for row, k in zip(per_letter, n_choices)]


@torch.no_grad()
def openings_logprob(model, tokenizer, prompts, openings: Sequence[str], chat: bool, batch_size: int = 8) -> torch.Tensor:
    """(N, O) log P(opening | prompt) for every prompt and every one of a few short openings.

    A batch of prompts is run once (left padding, explicit position ids) and its KV cache repeated for the O
    openings (right-padded after the prompt), so the cost is about one forward pass per prompt however many
    openings there are.
    """
    pad = tokenizer.pad_token_id
    op_ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in openings]
    n_op, width = len(openings), max(len(o) for o in op_ids)
    ops = torch.full((n_op, width), pad, dtype=torch.long)
    op_mask = torch.zeros((n_op, width), dtype=torch.long)
    for j, o in enumerate(op_ids):
        ops[j, : len(o)] = torch.tensor(o)
        op_mask[j, : len(o)] = 1
    device = model.device
    encoded = [encode(tokenizer, p, chat) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out = torch.empty((len(prompts), n_op))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        b, length = len(idx), max(len(encoded[i]) for i in idx)
        ids = torch.full((b, length), pad, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, length - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[j, length - len(encoded[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        # logits only at the last prompt position: the LM head over all positions would dominate the cost
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = first["cache"] if "cache" in first else first.past_key_values  # transformers >= 5.2x names it cache
        cache.batch_repeat_interleave(n_op)  # row j * n_op + k: prompt j, opening k
        ops_b, op_mask_b = ops.repeat(b, 1).to(device), op_mask.repeat(b, 1).to(device)
        mask2 = torch.cat([mask.repeat_interleave(n_op, 0), op_mask_b], 1)
        pos2 = mask.sum(1).repeat_interleave(n_op)[:, None] + torch.arange(width, device=device)
        rest = model(input_ids=ops_b, attention_mask=mask2, position_ids=pos2, cache=cache, use_cache=True)
        # logits predicting opening token t: the prompt's last position for t = 0, else position t - 1 of the rest
        logits = torch.cat([first.logits[:, -1:].repeat_interleave(n_op, 0), rest.logits[:, :-1]], 1)
        lp = log_probs(logits).gather(-1, ops_b[..., None])[..., 0]  # (b * n_op, width)
        scores = (lp * op_mask_b).sum(1).view(b, n_op).cpu()
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return out
