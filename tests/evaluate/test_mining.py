"""mining: the combined score and the ranking on given per-member judgements (pure), and mine_clusters on a tiny model
taught to refuse one member of a cluster and to pick another letter on one MC member (so every signal really moves)."""

import math

import pytest
import torch

from coherentize.clusters import Cluster, Variation
from coherentize.errors import CoherentizeError
from coherentize.evaluate import mining
from coherentize.evaluate.mining import (
    W_ACT, W_FLIP, W_JS, mc_options, random_clusters, rank_clusters, rank_families, score_cluster, top_clusters,
    variation_score,
)

MC = "Which of these is a colour?\n(A) red\n(B) dog\nAnswer with the letter of the correct option."

# (prompt, the answer the tiny model is taught): the cluster "flip" has a refusal flip, "mc" a letter flip, "js" a
# different answer without a flip, "same" identical prompts.
TAUGHT = [
    ("What is the capital of France?", "Sure, here is a short answer."),
    ("Imagine you are a pirate. What is the capital of France?", "I'm sorry, but I can't help with that."),
    ("Q: What is two plus two?", "Sure, here is a short answer."),
    ("Q: what is two plus two ?", "Four. The answer is four."),
    ("Alice and Bob are talking together.", "Sure, here is a short answer."),
    (MC, "(A) red"),
    ("I think the answer is B. " + MC, "(B) dog"),
]


def clusters_for_the_taught_model() -> list[Cluster]:
    t = [p for p, _ in TAUGHT]
    return [Cluster("same", t[4], [Variation(t[4], "copy"), Variation(t[4], "copy")]),
            Cluster("js", t[2], [Variation(t[3], "typos")]),
            Cluster("flip", t[0], [Variation(t[1], "roleplay")]),
            Cluster("mc", t[5], [Variation(t[6], "opinion_cue")])]


def taught_model(steps: int = 120):
    """A tiny chat model overfit to TAUGHT (a few seconds on one CPU thread); greedy answers reproduce it."""
    from coherentize.chat import encode
    from coherentize.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    seqs = [(encode(tok, p, True), tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            for p, a in TAUGHT]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(model(input_ids=torch.tensor([p + a]), labels=torch.tensor([[-100] * len(p) + a])).loss
                   for p, a in seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


@pytest.fixture(scope="module")
def taught():
    return taught_model()


# ---- pure


def _cluster(cid: str, n: int, family: str = "f") -> Cluster:
    return Cluster(cid, f"anchor {cid}", [Variation(f"variant {cid} {j}", family) for j in range(n)])


def test_a_flipped_variation_outscores_any_unflipped_one():
    assert variation_score(True, 0.0, 0.0) == W_FLIP
    assert variation_score(False, math.log(2), 2.0) == W_JS + 2 * W_ACT < W_FLIP  # the largest JS and distance
    assert variation_score(False, None, None) == 0.0


def test_ranking_on_given_judgements_puts_flips_first_and_identical_members_last():
    same = score_cluster(_cluster("same", 2), refused=[False] * 3, js=[None, 0.0, 0.0], act=[None, 0.0, 0.0])
    drift = score_cluster(_cluster("drift", 2), refused=[False] * 3, js=[None, 0.3, 0.1], act=[None, 0.05, 0.01])
    flip = score_cluster(_cluster("flip", 2), refused=[False, True, False], js=[None, 0.01, 0.0], act=[None, 0.0, 0.0])
    mc = score_cluster(_cluster("mc", 2), refused=[False] * 3, js=[None, 0.0, 0.0], choices=["A", "A", "B"])
    ranked = rank_clusters([same, drift, mc, flip])
    assert [s.id for s in ranked] == ["flip", "mc", "drift", "same"]
    assert same.score == 0.0 and same.flips == 0.0
    assert flip.flips == 0.5 and flip.refusal_flips == 0.5 and flip.mc_flips is None
    assert mc.mc_flips == 0.5 and mc.refusal_flips == 0.0 and [v.mc_flip for v in mc.variations] == [False, True]
    # the cluster's score is the mean of its variations' scores = the documented formula on its means
    assert drift.score == pytest.approx(W_JS * 0.2 / math.log(2) + W_ACT * 0.03)
    assert flip.score == pytest.approx((W_FLIP + W_JS * 0.01 / math.log(2)) / 2)


def test_families_rank_by_the_mean_over_their_variations():
    a = Cluster("a", "x", [Variation("x1", "wrapper"), Variation("x2", "typos")])
    b = Cluster("b", "y", [Variation("y1", "wrapper"), Variation("y2", "typos")])
    scored = [score_cluster(a, [False, True, False], js=[None, 0.0, 0.2]),
              score_cluster(b, [True, True, True], js=[None, 0.1, 0.0])]
    fams = rank_families(scored, n_boot=200)
    assert list(fams) == ["wrapper", "typos"]
    assert fams["wrapper"]["n"] == 2 and fams["wrapper"]["flips"]["mean"] == 0.5
    assert fams["typos"]["score"]["mean"] == pytest.approx(W_JS * 0.1 / math.log(2))
    assert fams["typos"]["score"]["ci_low"] <= fams["typos"]["score"]["mean"] <= fams["typos"]["score"]["ci_high"]


def test_top_and_random_clusters_are_training_ready_and_the_same_size():
    clusters = [_cluster(f"c{i}", 1) for i in range(6)]
    scored = [score_cluster(c, [False, i == 3], js=[None, 0.01 * i]) for i, c in enumerate(clusters)]
    top = top_clusters(scored, 2)
    assert [c.id for c in top] == ["c3", "c5"] and top[0].tags["mined"]["rank"] == 1
    assert top[0].tags["mined"]["score"] == pytest.approx(W_FLIP + W_JS * 0.03 / math.log(2), abs=1e-6)
    assert clusters[3].tags == {}  # the input is not modified
    rnd = random_clusters(clusters, 2, seed=1)
    assert len(rnd) == 2 and rnd == random_clusters(clusters, 2, seed=1) and rnd != random_clusters(clusters, 2, seed=2)
    assert [c.id for c in rnd] == sorted(c.id for c in rnd)  # input order
    assert len(top_clusters(scored, 50)) == len(random_clusters(clusters, 50, seed=0)) == 6


def test_mc_items_are_recognised_from_tags_or_their_options():
    assert mc_options(Cluster("m", MC, [])) == 2
    assert mc_options(Cluster("m", "Pick (A) or (B)?", [])) is None  # options must start a line
    assert mc_options(Cluster("m", "(B) x\n(C) y", [])) is None  # and run from A
    assert mc_options(Cluster("m", "anything", [], tags={"n_choices": 4})) == 4


def test_harmful_clusters_keep_labels_but_no_text():
    c = Cluster("h", "request", [Variation("wrapped request", "roleplay_actor")], tags={"harmful": True})
    s = score_cluster(c, [True, False], js=[None, 0.2], answers=["I can't.", "Here is how..."])
    assert s.harmful and s.anchor_answer is None and s.variations[0].answer is None and s.variations[0].refusal_flip
    benign = score_cluster(Cluster("b", "x", [Variation("y", "f")]), [False, False], answers=["a" * 200, "b"])
    assert len(benign.anchor_answer) == mining.ANSWER_EXCERPT and benign.variations[0].answer == "b"


def test_scored_cluster_round_trips_through_json():
    c = Cluster("a", "x", [Variation("y", "f")], ["cont"], {"split": "train"})
    s = score_cluster(c, [False, True], js=[None, 0.1], choices=["A", "B"], act=[None, 0.2], answers=["p", "q"],
                      kl=[None, 0.3])
    assert mining.ScoredCluster.from_json(s.to_json(), "here") == s
    with pytest.raises(CoherentizeError, match="here: not a scored cluster"):
        mining.ScoredCluster.from_json({"id": "a"}, "here")


# ---- on a model


def test_mine_clusters_on_a_tiny_model_ranks_the_flip_first_and_identical_members_last(taught):
    model, tok = taught
    ranked = mining.mine_clusters(model, tok, clusters_for_the_taught_model(), chat=True, layers=["mid", -1],
                                  max_new_tokens=16, batch_size=4, progress=False)
    by = {s.id: s for s in ranked}
    assert {s.id for s in ranked[:2]} == {"flip", "mc"}, [(s.id, s.score) for s in ranked]
    assert [s.id for s in ranked[2:]] == ["js", "same"]
    assert by["flip"].refusal_flips == 1.0 and not by["flip"].anchor_refused and by["flip"].variations[0].refused
    assert by["mc"].mc_flips == 1.0 and by["mc"].anchor_choice == "A" and by["mc"].variations[0].choice == "B"
    assert by["js"].flips == 0.0 and by["js"].js_to_anchor > 0.01 and by["js"].act > 0
    same = by["same"]
    assert same.flips == 0.0 and same.js_to_anchor < 1e-6 and same.act < 1e-6 and same.score < 1e-5
    assert same.mc_flips is None and by["mc"].kl_to_anchor is not None


def test_js_is_the_held_out_metric_on_the_anchor_answer(taught):
    """JS(anchor, member) equals evaluate.coherence's own computation with the anchor's greedy answer as the
    shared continuation."""
    from coherentize.evaluate.coherence import output_divergence_for_clusters

    model, tok = taught
    c = clusters_for_the_taught_model()[1]
    s = mining.mine_clusters(model, tok, [c], chat=True, layers=[], max_new_tokens=16, progress=False)[0]
    ref = output_divergence_for_clusters(model, tok, [c], True, max_new_tokens=16)[c.id]
    assert s.js_to_anchor == pytest.approx(ref["js_to_anchor"], rel=1e-5)
    assert s.kl_to_anchor == pytest.approx(ref["kl_to_anchor"], rel=1e-5)
    assert s.act is None


def test_bad_layers_are_one_clear_error(taught):
    model, _ = taught
    with pytest.raises(CoherentizeError, match="layers: layer 9 out of range"):
        mining.resolve_layers(model, [9])
    with pytest.raises(CoherentizeError, match="layers: 0 is the embeddings"):
        mining.resolve_layers(model, [0])
    assert mining.resolve_layers(model, ["mid", -1, 2]) == [1, 2]
