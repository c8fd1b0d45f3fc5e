"""Teacher-forced forward passes that every probe shares: log-probabilities of given continuations (whole
sequences or per token), last-prompt-token residual activations, and the log-probabilities of short response openings.

Sequences are left-padded with ``collate.left_pad`` (position ids count real tokens only, so padding changes
nothing), sorted by length, and run without gradients in batches cut where padding would cost more than another
call. Left padding puts every row's continuation at the end, so the LM head runs only over the last positions
(``logits_to_keep``), never over whole prompts.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Sequence

import torch

from coherentize.chat import Prompt, encode
from coherentize.collate import left_pad
from coherentize.generation import generate_greedy
from coherentize.losses import log_probs


def encode_pairs(tokenizer, prompts: Sequence[Prompt], continuations: Sequence[str], chat: bool):
    """[(prompt ids, continuation ids)]: the continuation tokenised on its own, without special tokens."""
    out = []
    for p, c in zip(prompts, continuations):
        pid = encode(tokenizer, p, chat)
        cid = tokenizer(c, add_special_tokens=False)["input_ids"] if c else []
        out.append((pid, cid))
    return out


def _length_chunks(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Rows sorted longest first, cut into batches of at most batch_size where padding a row to its batch's
    longest would cost more than another forward call (generation.cut_chunks); generation.PACK False: every
    batch_size rows, as before."""
    from coherentize import generation

    if not generation.PACK:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return [order[a:b] for a, b in generation.cut_chunks(lengths, 0, batch_size)]


@torch.no_grad()
def _forward_batches(model, pad_id: int, seqs: list[tuple[list[int], list[int]]], batch_size: int):
    """Yield (index, logits (T, V) at the positions predicting the continuation — or the next token when the
    continuation is empty) per sequence."""
    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    device = model.device
    for idx in _length_chunks(order, [len(seqs[i][0]) + len(seqs[i][1]) for i in order], batch_size):
        ids, mask, pos = left_pad([seqs[i][0] + seqs[i][1] for i in idx], pad_id)
        # left padding: every continuation ends at the last position, so only the last `keep` need logits
        keep = max(len(seqs[i][1]) for i in idx) + 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    logits_to_keep=keep)
        for j, i in enumerate(idx):
            nc = len(seqs[i][1])
            last = keep - nc - 1  # the last prompt token, in the kept positions
            rows = slice(last, last + nc) if nc else slice(last, last + 1)
            yield i, out.logits[j, rows]


def continuation_logprobs(model, tokenizer, prompts, continuations, chat: bool, batch_size: int = 16):
    """Per pair, the (T, V) float32 next-token log-probabilities at the T positions of the continuation."""
    seqs = encode_pairs(tokenizer, prompts, continuations, chat)
    out: list = [None] * len(seqs)
    for i, logits in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size):
        out[i] = log_probs(logits).cpu()
    return out


def sequence_logprob(model, tokenizer, prompts, continuations, chat: bool, batch_size: int = 16) -> list[float]:
    """Per pair, log P(continuation | prompt): the sum of the continuation tokens' log-probabilities."""
    seqs = encode_pairs(tokenizer, prompts, continuations, chat)
    out = [0.0] * len(seqs)
    for i, logits in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size):
        target = torch.tensor(seqs[i][1], device=logits.device)
        out[i] = float(log_probs(logits).gather(-1, target[:, None]).sum())
    return out


@torch.no_grad()
def last_token_hidden(model, tokenizer, prompts, chat: bool, batch_size: int = 16) -> torch.Tensor:
    """(N, L, H) residual stream after each of the L blocks (embedding layer excluded; the last block's output is
    taken before the final norm, see residual.py) at the last prompt token."""
    from coherentize.residual import capture, decoder_layers

    layers = list(range(1, len(decoder_layers(model)) + 1))
    seqs = [encode(tokenizer, p, chat) for p in prompts]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    rows: list = [None] * len(seqs)
    for idx in _length_chunks(order, [len(seqs[i]) for i in order], batch_size):
        ids, mask, pos = (t.to(model.device) for t in left_pad([seqs[i] for i in idx], tokenizer.pad_token_id))
        with capture(model, layers, last=1) as hs:  # left padding: the last position is every row's last token
            model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        for j, i in enumerate(idx):
            rows[i] = torch.stack([hs[l][j, -1] for l in layers]).float().cpu()
    return torch.stack(rows)


def text_token_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 8, max_tokens: int = 256):
    """Per text, (T-1, V) log-probabilities predicting tokens 2..T of the raw text (no chat template), and the
    (T-1,) target ids: for perplexity and KL to a reference model on neutral text."""
    seqs = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens]
        seqs.append((ids[:1], ids[1:]))
    out: list = [None] * len(seqs)
    for i, logits in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size):
        out[i] = (log_probs(logits).cpu(), torch.tensor(seqs[i][1]))
    return out


def letter_forms(letter: str) -> list[str]:
    """Ways a response can open with a choice letter: 'A', ' A', '(A'. Their token sequences begin differently, so
    their probabilities add up without double counting."""
    return [letter, f" {letter}", f"({letter}"]


def mc_letter_logprobs(model, tokenizer, prompts, n_choices: Sequence[int], chat: bool,
                       batch_size: int = 16) -> torch.Tensor:
    """(N, max(n_choices)) log P(letter | prompt) per multiple-choice prompt: log sum P(form | prompt) over
    letter_forms (teacher-forced, exact for multi-token forms), -inf past a prompt's own number of options."""
    k_max = max(n_choices)
    forms = [f for c in "ABCDEFGH"[:k_max] for f in letter_forms(c)]
    lp = openings_logprob(model, tokenizer, prompts, forms, chat, batch_size)  # (N, k_max * 3)
    per_letter = torch.logsumexp(lp.view(len(prompts), k_max, 3), -1)  # (N, k_max)
    beyond = torch.arange(k_max)[None, :] >= torch.tensor(list(n_choices))[:, None]
    return per_letter.masked_fill(beyond, float("-inf"))


def mc_choice(model, tokenizer, prompts, n_choices: Sequence[int], chat: bool, batch_size: int = 16) -> list[str]:
    """The letter the model puts most probability on as the opening of its response, per multiple-choice prompt
    (the argmax of mc_letter_logprobs)."""
    per_letter = mc_letter_logprobs(model, tokenizer, prompts, n_choices, chat, batch_size)
    return ["ABCDEFGH"[int(row.argmax())] for row in per_letter]


_SHARED: dict | None = None  # inside shared_openings(): (model, prompt, openings, chat) -> (O,) log-probs


@contextmanager
def shared_openings():
    """Within this block openings_logprob scores each (model, prompt, openings) once and reads it back after. One
    evaluation (run_suite) asks for some twice: the capability probe's lettered questions are the coherence suite's
    first framing of them, and the sycophancy probe's neutral one."""
    global _SHARED
    previous, _SHARED = _SHARED, {}
    try:
        yield
    finally:
        _SHARED = previous


def openings_logprob(model, tokenizer, prompts, openings: Sequence[str], chat: bool,
                     batch_size: int = 16) -> torch.Tensor:
    """(N, O) log P(opening | prompt) for every prompt and every one of a few short openings.

    One prefill per prompt (its shared prefix once per chunk, see generation.prefill) and one small pass over the
    openings' token tree on its cache (generation.OpeningTree), so the cost is about one forward pass per prompt however many
    openings there are. Inside shared_openings(), rows scored before are read back, not scored again.
    """
    def run(ps):
        return generate_greedy(model, tokenizer, ps, chat, 0, batch_size, batch_size, openings=openings,
                               progress=False).openings

    if _SHARED is None or not prompts:
        return run(prompts)
    keys = [(id(model), json.dumps(p, sort_keys=True), tuple(openings), chat) for p in prompts]
    todo: dict = {}  # key -> prompt, each key once, in order
    for k, p in zip(keys, prompts):
        if k not in _SHARED:
            todo.setdefault(k, p)
    if todo:
        _SHARED.update(zip(todo, run(list(todo.values()))))
    return torch.stack([_SHARED[k] for k in keys])


def row_openings_logprob(model, tokenizer, prompts, openings: Sequence[Sequence[str]], chat: bool,
                         batch_size: int = 16) -> list[list[float]]:
    """Per prompt, log P(opening | prompt) for each of its own openings (e.g. a question's option texts): prompts
    prefilled in batches as in openings_logprob, each row's openings scored on its cache in one padded tree pass."""
    return generate_greedy(model, tokenizer, prompts, chat, 0, batch_size, batch_size, progress=False,
                           row_openings=openings).row_openings
