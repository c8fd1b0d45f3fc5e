"""Batching: length-grouped batches of examples (every example once per epoch, seeded) and what they save."""

import random

import pytest

from coherentize.collate import Example, LengthGroupedBatches, padded_length


def _padding(lengths, order, bs):
    """Padding tokens of the batches an order gives: every row padded to its batch's longest."""
    batches = [order[s : s + bs] for s in range(0, len(order), bs)]
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("n, bs, window", [(37, 4, 50), (37, 4, 3), (8, 4, 50), (5, 8, 50)])
def test_every_example_once_per_epoch_in_batches_of_similar_length(n, bs, window):
    rng = random.Random(0)
    lengths = [rng.choice([rng.randrange(20, 60), rng.randrange(150, 300)]) for _ in range(n)]
    sampler = LengthGroupedBatches(lengths, bs, seed=3, window=window)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(n)) and len(sampler) == n
        epochs.append(order)
        if window * bs >= n:  # one window: the batches of the sorted order, in another order
            assert _padding(lengths, order, bs) == _padding(lengths, sorted(range(n), key=lengths.__getitem__), bs)
        else:
            shuffled = list(range(n))
            rng.shuffle(shuffled)
            assert _padding(lengths, order, bs) < 0.5 * _padding(lengths, shuffled, bs)
    # seeded: the same seed and epoch give the same order, another epoch or seed another one
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]
    if n > bs:
        assert epochs[0] != epochs[1]
        other = LengthGroupedBatches(lengths, bs, seed=4, window=window)
        assert list(other) != epochs[0]


def test_the_partial_batch_comes_last():
    """A DataLoader cuts the index stream into consecutive batches: only the last one may be short, so every sorted
    batch stays whole (here the two longest examples, the sorted window's remainder)."""
    sampler = LengthGroupedBatches(list(range(10)), 4, seed=0)
    firsts = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert set(order[-2:]) == {8, 9}
        assert {frozenset(order[:4]), frozenset(order[4:8])} == {frozenset(range(4)), frozenset(range(4, 8))}
        firsts.add(frozenset(order[:4]))
    assert len(firsts) == 2  # the full batches come in a random order


def test_padded_length_is_the_longest_variant_row():
    ex = Example("c", [1] * 5, [[2] * 30, [3] * 80, [4] * 7], [9] * 12)
    assert padded_length(ex) == 92
    assert padded_length({"cluster_id": "c", "anchor_ids": [1] * 5, "variant_ids": [[2] * 3],
                          "response_ids": [9] * 4}) == 7
