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


def letter_token_ids(tokenizer, letter: str) -> list[int]:
    """First-token ids by which a response can start with a choice letter: 'A', ' A', '(A'."""
    ids = set()
    for form in (letter, f" {letter}", f"({letter}"):
        toks = tokenizer(form, add_special_tokens=False)["input_ids"]
        if toks:
            ids.add(toks[0])
    return sorted(ids)


def mc_choice(model, tokenizer, prompts, n_choices: Sequence[int], chat: bool, batch_size: int = 16) -> list[str]:
    """The letter the model puts most probability on as its first response token, per multiple-choice prompt."""
    lp = next_token_logprobs(model, tokenizer, prompts, chat, batch_size)  # (N, V)
    out = []
    for row, k in zip(lp, n_choices):
        letters = "ABCDEFGH"[:k]
        scores = [torch.logsumexp(row[letter_token_ids(tokenizer, c)], 0) for c in letters]
        out.append(letters[int(torch.stack(scores).argmax())])
    return out
