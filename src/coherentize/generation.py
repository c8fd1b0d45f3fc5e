"""Batched generation: the one place the toolkit generates text locally.

Greedy decoding runs its own loop over the KV cache (sampling goes through transformers' ``generate``):

- **prefill in prefix groups**: prompts are grouped by shared token prefix (the chat template's header; a jailbreak
  template's text before the request) and cut into chunks of similar length; a chunk's common prefix is run once and
  its cache copied to the chunk's rows, and only the rest is padded (a chunk is never padded to another's length);
- **tails packed**: where it costs less (``tail_cost``), a chunk's rests after the prefix run end to end in fewer
  rows (``pack_rows``) with a block-diagonal causal mask instead of each padded to the longest, and the keys and
  values are then laid out as the padded pass would leave them;
- **decode in larger batches**: the chunks' caches are joined (left-padded) into decode batches of ``batch_size``
  rows, since a decode step costs about the same for 16 rows as for 48 on a CPU (it reads every weight once);
- **rows leave when done**: at EOS, or when the caller's ``stop(text)`` says the rest of the text cannot matter
  (e.g. the refusal judge's decision is settled); the batch shrinks instead of decoding padding;
- **openings from the same prefill**: optionally, log P(opening | prompt) for a few short response openings
  (refusal vs compliance, multiple-choice letters) from one small tree-masked pass over the openings' tokens on the
  prefill's cache (``OpeningTree``), instead of a second prefill of every prompt;
- **more from the same prefill**: optionally, each row's next-token distributions over a continuation of its own
  (teacher-forced, one causal chain pass on the prefill's cache) and the residual stream after every block at the
  last prompt token (hooks on the prefill), so a probe that also needs these runs no second pass over its prompts.

Outputs come back in input order and equal what ``model.generate`` gives greedily, up to float rounding: a row's
result does not depend on the other rows, but different batch shapes can round differently (rarely enough to flip a
near-tie greedy token; ``benchmarks/eval_batched.py`` counts identical outputs against the previous path).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from coherentize.chat import Prompt, encode, render
from coherentize.collate import left_pad
from coherentize.losses import log_probs
from coherentize.residual import capture, decoder_layers

PREFILL_ROWS = 16
"""Rows per prefill chunk (prompts of one prefix group, similar lengths)."""
MIN_SHARED = 8
"""A chunk's common prefix is run once when it has at least this many tokens."""
GROUP_EXTRA = 16
"""Prompts sharing this many tokens beyond the prefix common to all prompts form a prefix group."""
MIN_GROUP = 4
"""Smaller groups are pooled (they then share only the prefix common to all)."""


@dataclass
class Generation:
    """Greedy generation results, in input order."""

    texts: list[str]
    """The completions (special tokens removed, stripped)."""
    openings: torch.Tensor | None = None
    """(N, O) float32 log P(opening | prompt) for the openings asked for, else None."""
    new_tokens: int = 0
    """Tokens decoded in all (for throughput figures)."""
    row_openings: list[list[float]] | None = None
    """Per prompt, log P(opening | prompt) for each of its own openings (row_openings asked for), else None."""
    continuation_logprobs: list[torch.Tensor | None] | None = None
    """Per prompt, the (T, V) float32 next-token log-probabilities at the T positions of its continuation
    (row_continuations asked for; None for a row without one), else None."""
    hidden: torch.Tensor | None = None
    """(N, L, H) float32 residual stream after each of the L blocks at the last prompt token (hidden asked for;
    residual.py's meaning: the last block's output before the final norm), else None."""


# ---------------------------------------------------------------------------------------------------------------
# Planning (pure)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_batches(ids: Sequence[Sequence[int]], batch_size: int, prefill_rows: int = PREFILL_ROWS,
                 lm_row_cost: float | None = None) -> list[list[list[int]]]:
    """Decode batches of at most batch_size rows, each a list of prefill chunks (lists of row indices).

    Rows are grouped by shared prefix (sorted by token ids, a group = rows sharing GROUP_EXTRA tokens beyond the
    prefix common to all rows with the group's first row; groups under MIN_GROUP rows are pooled); within a group,
    rows are sorted by length (longest first) and cut into chunks of at most prefill_rows where padding would cost
    more than another prefix pass (cut_chunks; lm_row_cost: rows may be packed, see tail_cost); chunks fill the
    decode batches in order, never split.
    """
    if not ids:
        return []
    prefill_rows = max(1, min(prefill_rows, batch_size))
    order = sorted(range(len(ids)), key=lambda i: list(ids[i]))
    common = common_prefix_len(ids[order[0]], ids[order[-1]])  # sorted: the first and last share what all share
    groups: list[list[int]] = []
    for i in order:
        if groups and common_prefix_len(ids[groups[-1][0]], ids[i]) >= common + GROUP_EXTRA:
            groups[-1].append(i)
        else:
            groups.append([i])
    pooled = [i for g in groups if len(g) < MIN_GROUP for i in g]
    groups = [g for g in groups if len(g) >= MIN_GROUP] + ([pooled] if pooled else [])
    chunks = []
    for g in groups:
        g = sorted(g, key=lambda i: -len(ids[i]))
        shared = min(common_prefix_len(ids[g[0]], ids[i]) for i in g)
        chunks += [g[a:b] for a, b in cut_chunks([len(ids[i]) for i in g], shared, prefill_rows, lm_row_cost)]
    batches: list[list[list[int]]] = []
    rows = 0
    for c in chunks:
        if not batches or rows + len(c) > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(c)
        rows += len(c)
    return batches


CALL_TOKENS = 16
"""The fixed cost of one forward call, in tokens of prefill (Python and kernel launches), for cut_chunks."""


def cut_chunks(lengths: Sequence[int], shared: int, max_rows: int,
               lm_row_cost: float | None = None) -> list[tuple[int, int]]:
    """Cut rows sorted by length (longest first) into chunks [a, b) of at most max_rows that cost the fewest
    prefill tokens: per chunk, its common prefix once (at least `shared` tokens, when >= MIN_SHARED) plus its rows'
    rests, padded to the longest or packed (tail_cost, with lm_row_cost; None: padded), plus CALL_TOKENS per forward
    call. Dynamic programming over the cut points."""
    n = len(lengths)
    share = shared if shared >= MIN_SHARED else 0

    def cost(a: int, b: int) -> float:
        if b - a == 1 or not share:
            return CALL_TOKENS + tail_cost(lengths[a:b], lm_row_cost)[0]
        return 2 * CALL_TOKENS + share + tail_cost([x - share for x in lengths[a:b]], lm_row_cost)[0]

    best, back = [0.0] + [None] * n, [0] * (n + 1)
    for b in range(1, n + 1):
        for a in range(max(0, b - max_rows), b):
            c = best[a] + cost(a, b)
            if best[b] is None or c < best[b]:
                best[b], back[b] = c, a
    cuts, b = [], n
    while b:
        cuts.append((back[b], b))
        b = back[b]
    return cuts[::-1]


def pack_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Lanes of rows laid end to end, none longer than the longest row: first fit, longest rows first."""
    cap = max(lengths)
    lanes: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = next((k for k, r in enumerate(room) if lengths[i] <= r), None)
        if k is None:
            lanes.append([i])
            room.append(cap - lengths[i])
        else:
            lanes[k].append(i)
            room[k] -= lengths[i]
    return lanes


def lane_layout(lengths: Sequence[int], lanes: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """Where packed rows sit: per row its lane, first and last column (a lane's rows end to end, left-padded to
    the longest row)."""
    cap = max(lengths)
    lane_of, first, last = [0] * len(lengths), [0] * len(lengths), [0] * len(lengths)
    for k, lane in enumerate(lanes):
        start = cap - sum(lengths[i] for i in lane)
        for i in lane:
            lane_of[i], first[i], last[i] = k, start, start + lengths[i] - 1
            start += lengths[i]
    return lane_of, first, last


def tail_cost(lengths: Sequence[int], lm_row_cost: float | None) -> tuple[float, list[list[int]] | None]:
    """(tokens' work, lanes or None) of one pass over rows of these lengths: padded, rows x the longest; or packed
    (pack_rows), lanes x the longest plus lm_row_cost per extra LM-head row (logits_to_keep is one set of columns
    for every lane: lanes x distinct row ends, where padding needs one per row), when that is less. lm_row_cost
    None: padded."""
    cap = max(lengths)
    padded = len(lengths) * cap
    if lm_row_cost is None or len(lengths) < 2:
        return padded, None
    lanes = pack_rows(lengths)
    if len(lanes) == len(lengths):
        return padded, None
    ends = len(set(lane_layout(lengths, lanes)[2]))
    packed = len(lanes) * cap + lm_row_cost * (len(lanes) * ends - len(lengths))
    return (packed, lanes) if packed < padded else (padded, None)


# ---------------------------------------------------------------------------------------------------------------
# Model passes


def _cache_of(out):
    return out["cache"] if "cache" in out else out.past_key_values  # transformers >= 5.2x names it cache


PACK = True
"""Pack a prefill chunk's rows end to end into fewer rows where that costs less than padding them (pack_rows,
prefill); False: always pad (benchmarks compare)."""


@torch.no_grad()
def prefill(model, rows: list[list[int]], pad_id: int, layers: Sequence[int] = ()):
    """Run prompts (token rows) through the model, sharing their common prefix when long enough.

    Returns (cache, mask (R, C) long over the cache's C columns, n_real (R,) real tokens per row, last-position
    logits (R, V), hidden (R, len(layers), H) float32: the residual stream after each of `layers` at every row's last
    token, or None without layers). Layout of a row: [common prefix][left padding][rest of the prompt]; position ids
    count real tokens only, so every row sees the positions it would see alone. The rests (tails) run either padded
    to the longest, one row each, or packed end to end into fewer rows (pack_rows, with a block-diagonal mask) when
    that costs fewer tokens; a packed pass's keys and values are then laid out as the padded pass would leave them.
    """
    device = model.device
    shared = common_prefix_len(rows[0], rows[-1]) if len(rows) > 1 else 0
    for r in rows[1:-1]:
        shared = min(shared, common_prefix_len(rows[0], r))
    shared = min(shared, min(len(r) for r in rows) - 1)  # every row keeps at least one token after the prefix
    cache = None
    if len(rows) > 1 and shared >= MIN_SHARED:
        head = torch.tensor([rows[0][:shared]], device=device)
        cache = _cache_of(model(input_ids=head, use_cache=True, logits_to_keep=1))
    else:
        shared = 0
    tails = [r[shared:] for r in rows]
    lanes = tail_cost([len(t) for t in tails], lm_row_cost(model))[1]
    if lanes is not None:
        return _prefill_packed(model, cache, shared, tails, lanes, pad_id, layers)
    if cache is not None:
        cache.batch_repeat_interleave(len(rows))
    ids, mask, pos = left_pad(tails, pad_id)
    if shared:
        mask = torch.cat([torch.ones((len(rows), shared), dtype=torch.long), mask], 1)
        pos = pos + shared
    with _capture(model, layers, last=1) as got:  # left padding: the last position is every row's last token
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    cache=cache, use_cache=True, logits_to_keep=1)
    hidden = torch.stack([got[layer][:, -1] for layer in layers], 1).float().cpu() if layers else None
    n_real = torch.tensor([len(r) for r in rows])
    return _cache_of(out), mask, n_real, out.logits[:, -1].float(), hidden


def _capture(model, layers: Sequence[int], last: int | None = None):
    """residual.capture of these layers, or nothing to hook when there are none."""
    return capture(model, list(layers), last) if layers else contextlib.nullcontext({})


def lm_row_cost(model) -> float | None:
    """What the LM head costs per row in tokens' work of the decoder blocks (vocab x hidden / the blocks'
    parameters), for tail_cost; None where packing is off or cannot be laid out again (not a plain cache)."""
    head = model.get_output_embeddings()
    if not PACK or head is None or not _plain_cache_model(model):
        return None
    return head.weight.numel() / sum(p.numel() for p in decoder_layers(model).parameters())


def _plain_cache_model(model) -> bool:
    """A model whose cache is plain DynamicLayers (no sliding windows): a packed cache can be laid out again."""
    from transformers.cache_utils import DynamicCache

    try:
        return _joinable(DynamicCache(config=model.config))
    except Exception:  # a config the cache cannot read: do not pack
        return False


def _prefill_packed(model, cache, shared: int, tails: list[list[int]], lanes: list[list[int]], pad_id: int,
                    layers: Sequence[int]):
    """prefill's packed pass: each lane holds its rows' tails end to end (left-padded to the longest tail, cap);
    a token attends to the shared prefix and to the earlier tokens of its own row (a block-diagonal causal mask);
    positions restart after the prefix for every row. Returns prefill's tuple with the cache laid out per row."""
    from transformers.cache_utils import DynamicCache

    device = model.device
    n, cap, nl = len(tails), max(len(t) for t in tails), len(lanes)
    ids = torch.full((nl, cap), pad_id, dtype=torch.long)
    pos = torch.zeros((nl, cap), dtype=torch.long)
    seg = torch.full((nl, cap), -1, dtype=torch.long)  # the row each column holds (-1: padding)
    lane_of, first, end_of = lane_layout([len(t) for t in tails], lanes)
    for i, t in enumerate(tails):
        k, a, b = lane_of[i], first[i], end_of[i] + 1
        ids[k, a:b] = torch.tensor(t)
        pos[k, a:b] = torch.arange(shared, shared + len(t))
        seg[k, a:b] = i
    col = torch.arange(cap)
    allow = (seg[:, :, None] == seg[:, None, :]) & (col[None, :] <= col[:, None])[None]  # (nl, cap, cap)
    allow = torch.cat([torch.ones((nl, cap, shared), dtype=torch.bool), allow], 2)
    dtype = getattr(model, "dtype", torch.float32)
    additive = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
    if cache is not None:
        cache.batch_repeat_interleave(nl)
    ends = sorted(set(end_of))
    with _capture(model, layers) as got:
        out = model(input_ids=ids.to(device), attention_mask=additive[:, None].to(device),
                    position_ids=pos.to(device), cache=cache, use_cache=True,
                    logits_to_keep=torch.tensor(ends, device=device))
    lane_t = torch.tensor(lane_of)
    end_t = torch.tensor(end_of)
    logits = out.logits[lane_t, torch.tensor([ends.index(e) for e in end_of])].float()
    hidden = (torch.stack([got[layer][lane_t, end_t] for layer in layers], 1).float().cpu() if layers else None)
    # the padded layout: row i = [prefix][cap - len_i padding][its tail], read from its lane's columns
    lens = torch.tensor([len(t) for t in tails])
    j = torch.arange(cap)[None]  # (1, cap) tail column of the padded layout
    real = j >= (cap - lens)[:, None]  # (n, cap)
    src = torch.where(real, shared + end_t[:, None] - (cap - 1 - j), torch.zeros_like(j))
    src = torch.cat([torch.arange(shared).expand(n, shared), src], 1)  # (n, shared + cap)
    layers_kv = []
    for k, v, *_ in _cache_of(out):
        index = src.to(k.device)[:, None, :, None].expand(n, k.shape[1], -1, k.shape[-1])
        layers_kv.append((k[lane_t].gather(2, index), v[lane_t].gather(2, index)))
    mask = torch.cat([torch.ones((n, shared), dtype=torch.long), real.long()], 1)
    n_real = lens + shared
    return DynamicCache(layers_kv), mask, n_real, logits, hidden


@functools.cache
def _preallocated_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A DynamicLayer whose keys and values are views of buffers with room for the tokens still to come: a decode
        step writes its key and value in place, where DynamicLayer concatenates, copying the whole cache of every
        layer at every step (on a CPU about a fifth of the jailbreak suite's time, whose templates make caches long).
        The views hold exactly the values DynamicLayer would hold."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
            super().__init__()
            self.device, self.is_initialized, self._n = keys.device, True, keys.shape[-2]
            self._k = keys.new_empty(keys.shape[:-2] + (self._n + room, keys.shape[-1]))
            self._v = values.new_empty(values.shape[:-2] + (self._n + room, values.shape[-1]))
            self._k[..., : self._n, :] = keys
            self._v[..., : self._n, :] = values
            self._views()

        def _views(self) -> None:
            self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]

        def update(self, key_states, value_states, *args, **kwargs):
            t = key_states.shape[-2]
            if self._n + t > self._k.shape[-2]:  # out of room: grow (as DynamicLayer would, by one copy)
                self._k = torch.cat([self._k, self._k.new_empty(self._k.shape[:-2] + (t + 16, self._k.shape[-1]))], -2)
                self._v = torch.cat([self._v, self._v.new_empty(self._v.shape[:-2] + (t + 16, self._v.shape[-1]))], -2)
            self._k[..., self._n : self._n + t, :] = key_states
            self._v[..., self._n : self._n + t, :] = value_states
            self._n += t
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._n = self.keys.shape[-2]

    return PreallocatedLayer


PREALLOCATE = True
"""Decode into preallocated cache buffers (_preallocate); False: transformers' DynamicLayer (benchmarks compare)."""


def _preallocate(cache, room: int):
    """Give each layer of a plain DynamicCache room for `room` more tokens (one copy of the cache, instead of one per
    decode step). Other caches are returned unchanged."""
    if not PREALLOCATE or not _joinable(cache):
        return cache
    cls = _preallocated_layer_class()
    cache.layers = [cls(layer.keys, layer.values, room) if layer.is_initialized else layer for layer in cache.layers]
    return cache


def _joinable(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def join_caches(parts: list[tuple]) -> tuple:
    """Join prefill results [(cache, mask, n_real, logits)] into one batch: every cache left-padded (zeros, masked
    out) to the widest. Only for plain DynamicCaches (see _joinable)."""
    from transformers.cache_utils import DynamicCache

    if len(parts) == 1:
        return parts[0]
    width = max(p[1].shape[1] for p in parts)
    layers = []
    for layer in zip(*[list(p[0]) for p in parts]):  # per layer: one (keys, values, sliding) per part
        ks, vs = [], []
        for k, v, _ in layer:
            pad = width - k.shape[-2]
            ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        layers.append((torch.cat(ks), torch.cat(vs)))
    mask = torch.cat([torch.nn.functional.pad(p[1], (width - p[1].shape[1], 0)) for p in parts])
    return (DynamicCache(layers), mask, torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]))


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
        b, m = last_logits.shape[0], len(self.tokens)
        lp = _tree_pass(model, cache, mask, n_real, last_logits, self.tokens[None].expand(b, m),
                        self.depth[None].expand(b, m), self.allowed[None].expand(b, m, m))
        vals = lp[:, self.src.to(lp.device), self.tgt.to(lp.device)].cpu()  # (B, K)
        return torch.zeros((b, len(self.openings))).index_add_(1, self.owner, vals)

    @staticmethod
    @torch.no_grad()
    def score_rows(trees: Sequence["OpeningTree"], model, cache, mask: torch.Tensor, n_real: torch.Tensor,
                   last_logits: torch.Tensor) -> list[list[float]]:
        """As score, with a tree of its own per row (e.g. each question's own options): one pass over every row's
        nodes, padded to the largest tree (a padding node attends to the prompt and itself and is never read)."""
        b, m = last_logits.shape[0], max(len(t.tokens) for t in trees)
        tokens = torch.zeros((b, m), dtype=torch.long)
        depth = torch.zeros((b, m), dtype=torch.long)
        allowed = torch.eye(m, dtype=torch.bool).repeat(b, 1, 1)
        for r, t in enumerate(trees):
            k = len(t.tokens)
            tokens[r, :k], depth[r, :k], allowed[r, :k, :k] = t.tokens, t.depth, t.allowed
        lp = _tree_pass(model, cache, mask, n_real, last_logits, tokens, depth, allowed)
        out = []
        for r, t in enumerate(trees):
            vals = lp[r, t.src.to(lp.device), t.tgt.to(lp.device)].cpu()  # (K,)
            out.append(torch.zeros(len(t.openings)).index_add_(0, t.owner, vals).tolist())
        return out


def _tree_pass(model, cache, mask: torch.Tensor, n_real: torch.Tensor, last_logits: torch.Tensor,
               tokens: torch.Tensor, depth: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, 1 + M, V) next-token log-probabilities at each prompt's last position and at the M tree nodes of its row
    (tokens, depth (B, M); allowed (B, M, M): which nodes a node attends to), from one pass on the prompts' cache;
    the cache is left as it was."""
    b, m = tokens.shape
    lp = log_probs(last_logits.float())[:, None]  # (B, 1, V)
    if not m:
        return lp
    device = last_logits.device
    dtype = getattr(model, "dtype", torch.float32)
    allow = torch.cat([mask.bool()[:, None, :].expand(b, m, mask.shape[1]), allowed], 2)  # (B, M, C + M)
    additive = torch.zeros(allow.shape, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)
    out = model(input_ids=tokens.to(device), attention_mask=additive[:, None].to(device),
                position_ids=(n_real[:, None] + depth).to(device), cache=cache, use_cache=True)
    cache.crop(-m)
    return torch.cat([lp, log_probs(out.logits.float())], 1)


@torch.no_grad()
def chain_logprobs(model, cache, mask: torch.Tensor, n_real: torch.Tensor, last_logits: torch.Tensor,
                   continuations: Sequence[Sequence[int] | None]) -> list[torch.Tensor | None]:
    """Per row, the (T, V) log-probabilities of its own continuation (T tokens) teacher-forced after its prompt: the
    prompt's last position, then tokens 1..T-1 of the continuation as a causal chain on the prompts' cache (a tree
    of one path: one _tree_pass, rows padded as in OpeningTree.score_rows). None for a row without a continuation.
    Equals a forward pass over prompt + continuation, up to float rounding; the cache is left as it was."""
    b = last_logits.shape[0]
    lengths = [len(c) if c else 0 for c in continuations]
    m = max(max(lengths) - 1, 0)
    tokens = torch.zeros((b, m), dtype=torch.long)
    allowed = torch.eye(m, dtype=torch.bool).repeat(b, 1, 1)  # a padding node attends to the prompt and itself
    for r, c in enumerate(continuations):
        k = max(lengths[r] - 1, 0)
        if k:
            tokens[r, :k] = torch.tensor(c[:k])
            allowed[r, :k, :k] = torch.ones((k, k), dtype=torch.bool).tril()
    lp = _tree_pass(model, cache, mask, n_real, last_logits, tokens, torch.arange(m)[None].expand(b, m), allowed)
    return [lp[r, : lengths[r]].cpu() if lengths[r] else None for r in range(b)]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _needs_hf_generate(model) -> bool:
    """Generation settings our greedy loop does not implement (then transformers' generate runs)."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return False
    return bool((gc.repetition_penalty not in (None, 1.0)) or gc.no_repeat_ngram_size or gc.bad_words_ids
                or gc.suppress_tokens or gc.begin_suppress_tokens or gc.min_new_tokens or (gc.min_length or 0) > 0
                or gc.forced_bos_token_id is not None or gc.forced_eos_token_id is not None or gc.sequence_bias)


def _progress_bar(progress, total: int, desc: str | None):
    """A tqdm bar (None: only on a terminal; True: always; False: never) or the caller's callable(n_done)."""
    if callable(progress):
        return None, progress
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc or "generate", unit="prompt", leave=False, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    return bar, bar.update


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    chat: bool,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    prefill_batch_size: int = PREFILL_ROWS,
    openings: Sequence[str] | None = None,
    stop: Callable[[str], bool] | None = None,
    progress=None,
    desc: str | None = None,
    row_openings: Sequence[Sequence[str]] | None = None,
    row_continuations: Sequence[str | None] | None = None,
    hidden: bool = False,
) -> Generation:
    """Greedy completions of every prompt (see the module docstring for how), and optionally opening log-probs.

    Models whose generation config asks for logits processors (repetition penalty, ...) decode through
    transformers' generate. batch_size: rows decoded together; prefill_batch_size: rows per prefill chunk.
    stop(text) -> True ends a row early (text = its completion so far, as returned); only pass a rule under which
    the rest of the text cannot change what the caller computes from it. progress: None (a bar on a terminal),
    True, False, or callable(n). row_openings: per prompt, openings of its own, scored like `openings` on the same
    prefill (OpeningTree.score_rows) into Generation.row_openings. row_continuations: per prompt, a text (tokenised
    on its own, without special tokens) or None; its next-token log-probabilities go to
    Generation.continuation_logprobs (chain_logprobs). hidden: the last prompt token's residual stream after every
    block into Generation.hidden.
    """
    from coherentize.errors import CoherentizeError
    from coherentize.served import ServedModel

    scoring = bool(openings or row_openings or row_continuations is not None or hidden)
    if isinstance(model, ServedModel):  # a model behind a server: its answers only
        if scoring:
            raise CoherentizeError("a model behind a server gives no log-probabilities or activations; turn "
                                   "refusal_margin off.")
        return Generation(model.complete_prompts(prompts, max_new_tokens))
    if max_new_tokens > 0 and _needs_hf_generate(model):
        texts = _generate_hf(model, tokenizer, prompts, chat, max_new_tokens, batch_size, False, 1.0, 1.0, None,
                             progress, desc)
        if not scoring:
            return Generation(texts)
        scored = generate_greedy(model, tokenizer, prompts, chat, 0, batch_size, prefill_batch_size, openings,
                                 progress=False, row_openings=row_openings, row_continuations=row_continuations,
                                 hidden=hidden)
        return Generation(texts, scored.openings, row_openings=scored.row_openings,
                          continuation_logprobs=scored.continuation_logprobs, hidden=scored.hidden)
    n = len(prompts)
    tree = OpeningTree.build(tokenizer, openings) if openings else None
    if row_openings is not None and len(row_openings) != n:
        raise ValueError(f"row_openings: {len(row_openings)} lists for {n} prompts")
    trees = None
    if row_openings is not None:  # one tree per distinct list of openings
        built = {key: OpeningTree.build(tokenizer, key) for key in dict.fromkeys(map(tuple, row_openings))}
        trees = [built[tuple(o)] for o in row_openings]
    row_scores: list = [None] * n if trees is not None else None
    if row_continuations is not None and len(row_continuations) != n:
        raise ValueError(f"row_continuations: {len(row_continuations)} texts for {n} prompts")
    conts = None if row_continuations is None else [
        tokenizer(c, add_special_tokens=False)["input_ids"] if c else None for c in row_continuations]
    cont_lps: list = [None] * n if conts is not None else None
    layers = list(range(1, len(decoder_layers(model)) + 1)) if hidden else []
    hs: list = [None] * n
    if not n:
        return Generation([], torch.empty((0, len(openings or ()))) if tree else None, row_openings=row_scores,
                          continuation_logprobs=cont_lps, hidden=torch.empty((0, len(layers), 0)) if hidden else None)
    ids = [encode(tokenizer, p, chat) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = _eos_ids(model, tokenizer)
    texts: list[str] = [""] * n
    scores = torch.empty((n, len(tree.openings))) if tree else None
    decoded = 0
    was_training = model.training
    model.eval()
    bar, tick = _progress_bar(progress, n, desc)
    try:
        for batch in plan_batches(ids, batch_size, prefill_batch_size, lm_row_cost(model)):
            parts = []
            for chunk in batch:
                *part, h = prefill(model, [ids[i] for i in chunk], pad, layers)
                parts.append(tuple(part))
                for j, i in enumerate(chunk):
                    hs[i] = h[j] if layers else None
            if len(parts) > 1 and not all(_joinable(p[0]) for p in parts):
                groups = [(c, p) for c, p in zip(batch, parts)]  # exotic caches: decode chunk by chunk
            else:
                groups = [([i for c in batch for i in c], join_caches(parts))]
            for rows, (cache, mask, n_real, logits) in groups:
                if tree is not None:
                    scores[rows] = tree.score(model, cache, mask, n_real, logits)
                if trees is not None:
                    for i, v in zip(rows, OpeningTree.score_rows([trees[i] for i in rows], model, cache, mask, n_real,
                                                                 logits)):
                        row_scores[i] = v
                if conts is not None:
                    for i, v in zip(rows, chain_logprobs(model, cache, mask, n_real, logits, [conts[i] for i in rows])):
                        cont_lps[i] = v
                if max_new_tokens <= 0:
                    tick(len(rows))
                    continue
                out, k = _decode(model, tokenizer, cache, mask, n_real, logits, max_new_tokens, eos, stop,
                                 lambda j: tick(1))
                decoded += k
                for j, i in enumerate(rows):
                    texts[i] = out[j]
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return Generation(texts, scores, decoded, row_scores, cont_lps, torch.stack(hs) if hidden else None)


def _decode(model, tokenizer, cache, mask, n_real, logits, max_new_tokens: int, eos: set[int], stop, done):
    """The greedy loop over one batch. Returns (texts in batch order, tokens decoded). done(j) per finished row."""
    device = model.device
    b = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(b)]
    active = list(range(b))  # batch row -> original row
    finished: set[int] = set()  # original rows, finished but still in the batch
    mask, pos = mask.to(device), n_real.to(device).clone()
    decoded = 0
    cache = _preallocate(cache, max_new_tokens)

    def text(j: int) -> str:
        return tokenizer.decode(tokens[j], skip_special_tokens=True).strip()

    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)  # (rows,) first maximum, as transformers' greedy search
        for r, j in enumerate(active):
            if j in finished:
                continue
            t = int(nxt[r])
            tokens[j].append(t)
            decoded += 1
            if t in eos or (stop is not None and stop(text(j))):
                finished.add(j)
                done(j)
        if step == max_new_tokens - 1 or len(finished) == len(active):
            break
        # drop finished rows once they are a quarter of the batch: copying the cache costs about one step
        if len(finished) * 4 >= len(active):
            keep = [r for r, j in enumerate(active) if j not in finished]
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            mask, pos, nxt = mask[sel], pos[sel], nxt[sel]
            active = [active[r] for r in keep]
            finished = set()
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], 1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None], cache=cache,
                    use_cache=True)
        pos = pos + 1
        logits = out.logits[:, -1].float()
    for j in active:
        if j not in finished:
            done(j)
    return [text(j) for j in range(b)], decoded


# ---------------------------------------------------------------------------------------------------------------
# The entry point every caller uses


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    chat: bool,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    progress=None,
    stop: Callable[[str], bool] | None = None,
    desc: str | None = None,
    prefill_batch_size: int = PREFILL_ROWS,
) -> list[str]:
    """Generate one completion per prompt, returned in input order.

    Greedy (generate_greedy) unless do_sample; sampling goes through transformers' generate in length-sorted
    batches. batch_size:
    rows decoded together. progress: None (a tqdm bar with a time estimate, on a terminal only), True, False, or a
    callable called with the number of prompts finished. desc: the bar's label. stop: see generate_greedy.
    """
    if not do_sample:
        return generate_greedy(model, tokenizer, prompts, chat, max_new_tokens, batch_size, prefill_batch_size,
                               stop=stop, progress=progress, desc=desc).texts
    return _generate_hf(model, tokenizer, prompts, chat, max_new_tokens, batch_size, do_sample, temperature, top_p,
                        seed, progress, desc)


@torch.no_grad()
def _generate_hf(model, tokenizer, prompts, chat, max_new_tokens, batch_size, do_sample, temperature, top_p, seed,
                 progress, desc) -> list[str]:
    """transformers' generate in batches sorted by length (less padding), returned in input order."""
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
    bar, tick = _progress_bar(progress, len(prompts), desc)
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
            tick(len(idx))
    finally:
        if bar is not None:
            bar.close()
        tokenizer.padding_side = side
        model.train(was_training)
    return out  # type: ignore[return-value]
