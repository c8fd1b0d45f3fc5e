"""Teacher-forced forward passes that every probe shares: log-probabilities of given continuations, next-token
distributions, last-prompt-token residual activations, and the log-probabilities of short response openings.

Sequences are left-padded with ``collate.left_pad`` (position ids count real tokens only, so padding changes
nothing), sorted by length, and run in batches without gradients. Left padding puts every row's continuation at the
end, so the LM head runs only over the last positions (``logits_to_keep``), never over whole prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from coherentize.chat import Prompt, encode
from coherentize.collate import left_pad
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
    continuation is empty —, hidden states tuple or None, index of the last prompt token in them) per sequence."""
    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    device = model.device
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask, pos = left_pad([seqs[i][0] + seqs[i][1] for i in idx], pad_id)
        width = ids.shape[1]
        # left padding: every continuation ends at the last position, so only the last `keep` need logits
        keep = max(len(seqs[i][1]) for i in idx) + 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    output_hidden_states=hidden, logits_to_keep=keep)
        for j, i in enumerate(idx):
            np_, nc = len(seqs[i][0]), len(seqs[i][1])
            last = keep - nc - 1  # the last prompt token, in the kept positions
            rows = slice(last, last + nc) if nc else slice(last, last + 1)
            hs = tuple(h[j] for h in out.hidden_states) if hidden else None
            yield i, out.logits[j, rows], hs, width - nc - 1


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
    for i, _, hs, last in _forward_batches(model, tokenizer.pad_token_id, seqs, batch_size, hidden=True):
        rows[i] = torch.stack([h[last] for h in hs[1:]]).float().cpu()
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
    lp = openings_logprob(model, tokenizer, prompts, forms, chat, batch_size)  # (N, k_max * 3)
    per_letter = torch.logsumexp(lp.view(len(prompts), k_max, 3), -1)  # (N, k_max)
    return [letters[int(row[:k].argmax())] for row, k in zip(per_letter, n_choices)]


def openings_logprob(model, tokenizer, prompts, openings: Sequence[str], chat: bool,
                     batch_size: int = 16) -> torch.Tensor:
    """(N, O) log P(opening | prompt) for every prompt and every one of a few short openings.

    One prefill per prompt (its shared prefix once per chunk, see generation.prefill) and one small pass over the
    openings' token tree on its cache (OpeningTree), so the cost is about one forward pass per prompt however many
    openings there are.
    """
    from coherentize.generation import generate_greedy

    return generate_greedy(model, tokenizer, prompts, chat, 0, batch_size, batch_size, openings=openings,
                           progress=False).openings


@dataclass
class OpeningTree:
    """The token trie of a few short response openings, scored in one pass after a batch of prompts' cache.

    Node m stands for a proper prefix (o_1..o_k) of some opening: its input token is o_k, at position (prompt
    length + k - 1), and it attends to the prompt and to its ancestors and itself (a tree-shaped attention mask), so
    its logits predict o_{k+1}. log P(o | prompt) = log P(o_1 | prompt's last position) + sum_k log P(o_{k+1} | node
    (o_1..o_k)): exactly the teacher-forced log-probability, for all openings from one pass of M << sum |o| tokens.
    """

    openings: list[str]
    tokens: torch.Tensor
    """(M,) input token of each node."""
    depth: torch.Tensor
    """(M,) k - 1 for node (o_1..o_k): the offset of its position after the prompt."""
    allowed: torch.Tensor
    """(M, M) bool: node m attends to node m' (m' an ancestor of m, or m itself)."""
    src: torch.Tensor
    """(K,) where each scored token's distribution comes from: 0 = the prompt's last position, m + 1 = node m."""
    tgt: torch.Tensor
    """(K,) the scored token."""
    owner: torch.Tensor
    """(K,) the opening each scored token belongs to."""

    @classmethod
    def build(cls, tokenizer, openings: Sequence[str]) -> "OpeningTree":
        op_ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in openings]
        if any(not o for o in op_ids):
            raise ValueError("every opening needs at least one token")
        nodes: dict[tuple, int] = {}
        toks, depth, parent, src, tgt, owner = [], [], [], [], [], []
        for oi, o in enumerate(op_ids):
            for k, t in enumerate(o):
                if k:
                    prefix = tuple(o[:k])
                    if prefix not in nodes:
                        nodes[prefix] = len(toks)
                        toks.append(o[k - 1])
                        depth.append(k - 1)
                        parent.append(nodes[prefix[:-1]] if k > 1 else -1)
                src.append(nodes[tuple(o[:k])] + 1 if k else 0)
                tgt.append(t)
                owner.append(oi)
        m = len(toks)
        allowed = torch.zeros((m, m), dtype=torch.bool)
        for a in range(m):
            b = a
            while b >= 0:
                allowed[a, b] = True
                b = parent[b]
        t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return cls(list(openings), t(toks), t(depth), allowed, t(src), t(tgt), t(owner))

    @torch.no_grad()
    def score(self, model, cache, mask: torch.Tensor, n_real: torch.Tensor, last_logits: torch.Tensor) -> torch.Tensor:
        """(B, O) log-probabilities of the openings after a batch of prompts: cache and mask (B, C) of the prompts
        (any padding layout), n_real (B,) their real token counts, last_logits (B, V) at their last position. The
        cache is left as it was (the openings' columns are cropped off)."""
        b = last_logits.shape[0]
        lp = log_probs(last_logits.float())[:, None]  # (B, 1, V)
        m = len(self.tokens)
        if m:
            device = last_logits.device
            dtype = getattr(model, "dtype", torch.float32)
            allow = torch.cat([mask.bool()[:, None, :].expand(b, m, mask.shape[1]),
                               self.allowed[None].expand(b, m, m)], 2)  # (B, M, C + M)
            additive = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
            out = model(input_ids=self.tokens[None].expand(b, m).to(device),
                        attention_mask=additive[:, None].to(device),
                        position_ids=(n_real[:, None] + self.depth[None]).to(device), cache=cache, use_cache=True)
            cache.crop(-m)
            lp = torch.cat([lp, log_probs(out.logits.float())], 1)  # (B, 1 + M, V)
        vals = lp[:, self.src.to(lp.device), self.tgt.to(lp.device)].cpu()  # (B, K)
        return torch.zeros((b, len(self.openings))).index_add_(1, self.owner, vals)
