"""Held-out consistency is one metric: training's before/after (evaluate/heldout.measure_consistency) gives the
evaluation coherence suite's values (evaluate/coherence.py) on the same cluster and continuation."""

import contextlib

import pytest
import torch

from coherentize.clusters import Cluster, Variation
from coherentize.collate import build_examples, left_pad
from coherentize.evaluate.coherence import output_divergence_for_clusters
from coherentize.evaluate.heldout import measure_consistency


@pytest.mark.parametrize("chat", [True, False])
def test_training_measurement_equals_the_evaluation_metric(tiny_tok, tiny_lm, chat):
    from coherentize.testing import tiny_tokenizer

    tok = tiny_tok if chat else tiny_tokenizer(chat=False)
    cont = "The capital of France is Paris."
    clusters = [Cluster(f"c{i}", q, [Variation("Please answer the question.\n\n" + q, "wrapper"),
                                     Variation(q + " Be brief.", "suffix"), Variation("Q: " + q, "qa")], [cont])
                for i, q in enumerate(["What is the capital of France?", "Name the capital of France."])]
    exs = build_examples(clusters, {c.id: cont for c in clusters}, tok, chat, members_per_cluster=4)
    got = measure_consistency(tiny_lm, None, exs, tok.pad_token_id, [1], ["prompt_suffix"])["per_example"]
    ev = output_divergence_for_clusters(tiny_lm.eval(), tok, clusters, chat)
    for i, c in enumerate(clusters):
        assert got["js_pairwise"][i] == pytest.approx(ev[c.id]["js_pairwise"], rel=1e-4, abs=1e-7)
        assert got["kl_to_anchor"][i] == pytest.approx(ev[c.id]["kl_to_anchor"], rel=1e-4, abs=1e-7)
        assert got["output_js"][i] == pytest.approx(ev[c.id]["js_to_anchor"], rel=1e-4, abs=1e-7)
        assert got["output_js"][i] > 0


def test_chunked_measurement_equals_one_example_at_a_time(tiny_tok, tiny_lm):
    # examples of different prompt and response lengths share a chunk; with a reference, the leash is measured too
    qs = ["What is the capital of France?", "Name a colour.", "Why is the sky blue on a clear day at noon?"]
    conts = ["Paris.", "Blue is a colour that many people like.", "Rayleigh scattering."]
    clusters = [Cluster(f"c{i}", q, [Variation("Please answer the question.\n\n" + q, "wrapper"),
                                     Variation(q + " Be brief.", "suffix"), Variation("Q: " + q, "qa")], [conts[i]])
                for i, q in enumerate(qs)]
    exs = build_examples(clusters, {c.id: c.continuations[0] for c in clusters}, tiny_tok, True, members_per_cluster=3)
    ref = lambda: contextlib.nullcontext(tiny_lm)  # noqa: E731
    sites = ["prompt_suffix", "response"]
    one = measure_consistency(tiny_lm, ref, exs, tiny_tok.pad_token_id, [1, 2], sites, batch_size=1)["per_example"]
    many = measure_consistency(tiny_lm, ref, exs, tiny_tok.pad_token_id, [1, 2], sites, batch_size=8)["per_example"]
    assert set(one) == set(many) and len(one["output_js"]) == len(exs)
    for k in one:
        assert many[k] == pytest.approx(one[k], rel=1e-4, abs=1e-6), k


def test_left_pad_aligns_rows_at_the_end_and_counts_positions_from_the_first_token():
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert [t.shape for t in left_pad([], 0)] == [torch.Size([0, 0])] * 3


def test_left_padded_rows_give_the_logits_of_their_unpadded_run(tiny_lm):
    rows = [[5, 6, 7, 8, 9], [10, 11]]
    ids, mask, pos = left_pad(rows, pad_id=0)
    with torch.no_grad():
        batch = tiny_lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        for i, r in enumerate(rows):
            alone = tiny_lm(input_ids=torch.tensor([r])).logits[0]
            torch.testing.assert_close(batch[i, -len(r):], alone, rtol=1e-4, atol=1e-5)
