"""From clusters to tensors: tokenized training examples and the collator that packs them.

Layout. Every member of a cluster is followed by the same response y (a shared continuation from the file, or the
frozen model's own answer to the anchor). Sequences are LEFT-padded, so the response and the prompt's tail sit at the
same offsets from the end in every row: position -1 is the last response token in every row, and the anchor and its
variants line up token by token over the response and over their shared prompt suffix. Losses then only need the
last few positions of each row (``logits_to_keep``), never full-vocabulary logits over the whole prompt.

An example is one anchor with up to K-1 of its variations (a cluster with more variations yields several examples).
Batching: ``LengthGroupedBatches`` puts examples of similar length together (wrapped prompts of a few hundred tokens
beside short ones would otherwise pad every row of a batch to the longest), every example still once per epoch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from coherentize.chat import encode
from coherentize.clusters import Cluster


@dataclass
class Example:
    cluster_id: str
    anchor_ids: list[int]
    variant_ids: list[list[int]]
    response_ids: list[int]


def shared_suffix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common token suffix of two prompts."""
    n = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        n += 1
    return n


def build_examples(
    clusters: Sequence[Cluster],
    responses: dict[str, str],
    tokenizer,
    chat: bool,
    members_per_cluster: int = 4,
    max_prompt_length: int = 256,
    max_response_length: int = 64,
    seed: int = 0,
) -> list[Example]:
    """Tokenize clusters into examples of one anchor + up to members_per_cluster-1 variations.

    The variations of a cluster are shuffled with `seed` and cut into chunks, so every variation is used once per
    epoch. Prompts longer than max_prompt_length keep their last tokens (where the template's generation prompt is).
    """
    if members_per_cluster < 2:
        raise ValueError("members_per_cluster must be at least 2 (an anchor and one variation)")
    rng = random.Random(seed)
    examples = []
    for c in clusters:
        resp = responses[c.id]
        response_ids = tokenizer(resp, add_special_tokens=False)["input_ids"][:max_response_length]
        if not response_ids:
            continue
        anchor_ids = encode(tokenizer, c.anchor, chat)[-max_prompt_length:]
        variants = [encode(tokenizer, v.prompt, chat)[-max_prompt_length:] for v in c.variations]
        rng.shuffle(variants)
        k = members_per_cluster - 1
        for s in range(0, len(variants), k):
            examples.append(Example(c.id, anchor_ids, variants[s : s + k], response_ids))
    return examples


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """THE padding helper: token rows -> (input_ids, attention_mask, position_ids), each (R, T) long, T = the longest
    row, padded on the left (the last token of every row at position -1); position ids count real tokens only
    (0 for the padding), so a row's positions are the same as when it runs alone."""
    t = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, t - len(r) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids, mask, pos


def padded_length(ex: Example | dict) -> int:
    """The row length an example needs in a left-padded batch: its longest variant prompt plus the response (the
    variant rows are most of a step's tokens, and every one of them is padded to the batch's longest)."""
    ex = ex if isinstance(ex, Example) else Example(**ex)
    return max((len(v) for v in ex.variant_ids), default=len(ex.anchor_ids)) + len(ex.response_ids)


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Example indices in batches of similar padded_length, every example once per epoch, seeded by (seed, epoch).

    Each epoch: a seeded permutation, cut into windows of `window` batches; each window sorted by length (ties in the
    permutation's order) and cut into batches; then the full batches shuffled, so that long and short batches come
    in a random order (no curriculum from short to long), and the one partial batch, if any, last (a DataLoader cuts
    the index stream into consecutive batches of batch_size). The trainer calls set_epoch, so a resumed run
    sees the batches the uninterrupted run would.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 50):
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        self.lengths, self.batch_size, self.seed, self.window = list(lengths), batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        bs, span = self.batch_size, self.batch_size * self.window
        batches = []
        for s in range(0, len(order), span):
            window = sorted(order[s : s + span], key=lambda i: self.lengths[i])
            batches += [window[j : j + bs] for j in range(0, len(window), bs)]
        full = [b for b in batches if len(b) == bs]
        rng.shuffle(full)
        return iter([i for b in full + [b for b in batches if len(b) < bs] for i in b])


@dataclass
class ConsistencyCollator:
    """Pack B examples into two left-padded batches: B anchors and the V = sum_b (K_b - 1) variants.

    Returns tensors (R = rows of that batch, L = longest response in the batch):
      anchor_input_ids / anchor_attention_mask / anchor_position_ids: (B, Ta)
      variant_input_ids / variant_attention_mask / variant_position_ids: (V, Tv)
      variant_anchor: (V,) index of each variant's anchor row
      anchor_response_len: (B,), variant_response_len: (V,)
      variant_suffix_len: (V,) tokens of prompt suffix shared with the anchor (the response excluded)
      response_ids: (B, L) right-aligned response tokens of each anchor (0 where absent)
    """

    pad_token_id: int

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        examples = [ex if isinstance(ex, Example) else Example(**ex) for ex in examples]  # rows of a datasets.Dataset
        anchor_rows, variant_rows, variant_anchor, suffix, resp_len_v = [], [], [], [], []
        for b, ex in enumerate(examples):
            anchor_rows.append(ex.anchor_ids + ex.response_ids)
            for v in ex.variant_ids:
                variant_rows.append(v + ex.response_ids)
                variant_anchor.append(b)
                suffix.append(shared_suffix_len(v, ex.anchor_ids))
                resp_len_v.append(len(ex.response_ids))
        a_ids, a_mask, a_pos = left_pad(anchor_rows, self.pad_token_id)
        v_ids, v_mask, v_pos = left_pad(variant_rows, self.pad_token_id)
        resp_len_a = torch.tensor([len(ex.response_ids) for ex in examples])
        L = int(resp_len_a.max())
        response_ids = torch.zeros((len(examples), L), dtype=torch.long)
        for b, ex in enumerate(examples):
            response_ids[b, L - len(ex.response_ids) :] = torch.tensor(ex.response_ids)
        return {
            "anchor_input_ids": a_ids,
            "anchor_attention_mask": a_mask,
            "anchor_position_ids": a_pos,
            "variant_input_ids": v_ids,
            "variant_attention_mask": v_mask,
            "variant_position_ids": v_pos,
            "variant_anchor": torch.tensor(variant_anchor, dtype=torch.long),
            "anchor_response_len": resp_len_a,
            "variant_response_len": torch.tensor(resp_len_v, dtype=torch.long),
            "variant_suffix_len": torch.tensor(suffix, dtype=torch.long),
            "response_ids": response_ids,
        }
