"""losses.assemble_components (and the trainer's passes feeding it) against a brute force on tiny models.

The brute force runs each prompt + response unpadded, one at a time, reads the residual stream with its own hooks,
and computes every divergence with plain torch sums, so nothing in it comes from the code under test. Cases: raw text
and chat, wrappers before and after the request, an anchor that is a suffix of its variant and the reverse (with
control copies), uneven response lengths, all three ACT sites, the centroid target at temperature 0.5, and the leash
(on all anchor rows and on a subset).
"""

import contextlib

import pytest
import torch

from coherentize import losses
from coherentize.clusters import Cluster, Variation
from coherentize.collate import ConsistencyCollator, build_examples
from coherentize.testing import tiny_model, tiny_tokenizer
from coherentize.trainer import ConsistencyConfig, consistency_components

RESPONSES = ["Paris is the capital.", "Four.", "It is blue because of the sky and the sea around it."]
QUESTIONS = ["What is the capital of France?", "What is two plus two?", "Why is the sky blue?"]
WRAP = "Please answer the question.\n\n"


def _clusters(kind):
    out = []
    for i, q in enumerate(QUESTIONS):
        if kind == "wrapper_before":  # the anchor is a whole token suffix of its variants
            vs = [Variation(WRAP + q, "wrapper"), Variation("Q: " + q, "qa")]
            out.append(Cluster(f"c{i}", q, vs))
        elif kind == "wrapper_after":
            vs = [Variation(q + " Answer in one line.", "suffix"), Variation(q + "\nBe brief.", "suffix")]
            out.append(Cluster(f"c{i}", q, vs))
        elif kind == "variant_suffix_of_anchor":  # the reverse, and control copies (variant == anchor)
            vs = [Variation(q, "unwrapped"), Variation(WRAP + q, "copy")]
            out.append(Cluster(f"c{i}", WRAP + q, vs))
        elif kind == "chat_persona":  # chat: a system prompt in front, the user turn shared
            vs = [Variation([{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": q}],
                            "persona"),
                  Variation(q + " Thanks!", "suffix")]
            out.append(Cluster(f"c{i}", q, vs))
    return out


CASES = {  # name -> (chat tokenizer, clusters)
    "raw_wrapper_before": (False, "wrapper_before"),
    "raw_wrapper_after": (False, "wrapper_after"),
    "raw_variant_suffix_of_anchor": (False, "variant_suffix_of_anchor"),
    "chat_wrapper_before": (True, "wrapper_before"),
    "chat_persona": (True, "chat_persona"),
}

SETTINGS = {  # name -> ConsistencyConfig overrides
    "anchor_js_bct_all_sites_l2": dict(output_divergence="js", bct_weight=1.0, act_metric="l2",
                                       act_sites=["last_prompt", "prompt_suffix", "response"]),
    "centroid_t05_prompt_suffix": dict(output_target="centroid", temperature=0.5, output_divergence="forward_kl",
                                       act_metric="l2_normalized", act_sites=["prompt_suffix"]),
    "reverse_kl_response_cosine": dict(output_divergence="reverse_kl", leash_divergence="js", act_metric="cosine",
                                       act_sites=["response", "last_prompt"], temperature=2.0),
}

LAYERS = [1, 2]  # a 2-layer model: the last block included (its residual stream, before the final norm)


def _brute_run(model, ids):
    """Unpadded forward of one sequence: logits (T, V) and {layer: (T, H)} from hooks on the decoder blocks."""
    hs, handles = {}, []
    for l in LAYERS:
        def hook(_m, _a, out, l=l):
            hs[l] = (out[0] if isinstance(out, tuple) else out)[0]
        handles.append(model.model.layers[l - 1].register_forward_hook(hook))
    try:
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    finally:
        for h in handles:
            h.remove()
    return logits, hs


def _div(p_logits, q_logits, kind, tau):
    """D(p || q) of two logit vectors at temperature tau, plain sums."""
    p, q = torch.softmax(p_logits / tau, -1), torch.softmax(q_logits / tau, -1)
    kl = lambda a, b: (a * (a.log() - b.log())).sum()  # noqa: E731
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    m = (p + q) / 2
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _dist(h, t, metric):
    if metric == "l2":
        return (h - t).pow(2).sum()
    if metric == "l2_normalized":
        return (h - t).pow(2).sum() / t.pow(2).sum()
    return 1 - (h @ t) / (h.norm() * t.norm())


def _suffix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def brute_force(model, ref, exs, c, leash_rows):
    """Every component, from unpadded per-example forwards."""
    tau = c.temperature
    out_terms, ce_terms, leash_terms = [], [], []
    act_terms = {l: [] for l in LAYERS}
    for b, ex in enumerate(exs):
        y = ex.response_ids
        members = [ex.anchor_ids] + ex.variant_ids
        cur = [_brute_run(model, m + y) for m in members]
        orig = [_brute_run(ref, m + y) for m in members]
        for t in range(len(y)):
            pos = [len(m) + t - 1 for m in members]  # the position predicting response token t
            if c.output_target == "centroid":
                mean = sum(torch.softmax(orig[k][0][pos[k]] / tau, -1) for k in range(len(members))) / len(members)
            for k in range(1, len(members)):
                q_logits = cur[k][0][pos[k]]
                if c.output_target == "centroid":
                    q = torch.softmax(q_logits / tau, -1)
                    out_terms.append((mean * (mean.log() - q.log())).sum())
                else:
                    out_terms.append(_div(orig[0][0][pos[0]], q_logits, c.output_divergence, tau))
                ce_terms.append(-torch.log_softmax(q_logits, -1)[y[t]])
            if leash_rows is None or b in leash_rows:
                leash_terms.append(_div(orig[0][0][pos[0]], cur[0][0][pos[0]], c.leash_divergence, tau))
        pa = len(ex.anchor_ids)
        for k, v in enumerate(ex.variant_ids, start=1):
            pv, s = len(v), _suffix(v, ex.anchor_ids)
            sites = set()
            if "response" in c.act_sites:
                sites |= {pv + t for t in range(len(y))}
            if "last_prompt" in c.act_sites:
                sites |= {pv - 1}
            if "prompt_suffix" in c.act_sites:
                sites |= {pv - 1 - i for i in range(s)}
            for site in sorted(sites):
                anchor_site = pa + (site - pv)  # the same offset from the end in the anchor row
                for l in LAYERS:
                    act_terms[l].append(_dist(cur[k][1][l][site], orig[0][1][l][anchor_site], c.act_metric))
    # no site at all (wrappers after the request share no prompt suffix): ACT is 0
    per_layer = [torch.stack(act_terms[l]).mean() if act_terms[l] else torch.tensor(0.0) for l in LAYERS]
    return {"output": torch.stack(out_terms).mean(), "bct": torch.stack(ce_terms).mean(),
            "act": torch.stack(per_layer).mean(), **{f"act/layer{l}": v for l, v in zip(LAYERS, per_layer)},
            "leash": torch.stack(leash_terms).mean()}


def hand_built_tails(model, ref, exs, batch, W):
    """The pass outputs in the collator's layout, built row by row from unpadded forwards (not by the trainer)."""
    L = int(batch["anchor_response_len"].max())

    def tail(run_model, rows, hidden):
        logits, hs = [], {l: [] for l in LAYERS}
        for ids in rows:
            lg, h = _brute_run(run_model, ids)
            n = len(ids)
            row = torch.zeros(L, lg.shape[-1])
            for j in range(L):  # column j predicts the token at -L+j, i.e. comes from position n-L+j-1
                if n - L + j - 1 >= 0:
                    row[j] = lg[n - L + j - 1]
            logits.append(row)
            for l in LAYERS:
                col = torch.zeros(W, h[l].shape[-1])
                k = min(W, n)
                col[W - k:] = h[l][n - k:]
                hs[l].append(col)
        return losses.Tail(torch.stack(logits), {l: torch.stack(v) for l, v in hs.items()} if hidden else {})

    anchors = [ex.anchor_ids + ex.response_ids for ex in exs]
    variants = [v + ex.response_ids for ex in exs for v in ex.variant_ids]
    return (tail(model, variants, True), tail(ref, anchors, True), tail(ref, variants, False),
            tail(model, anchors, False))


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("case", list(CASES))
def test_assembly_equals_brute_force(case, setting, tmp_path):
    chat, kind = CASES[case]
    tok = tiny_tokenizer(chat=chat)
    clusters = _clusters(kind)
    exs = build_examples(clusters, {c.id: r for c, r in zip(clusters, RESPONSES)}, tok, chat, members_per_cluster=3)
    assert len({len(e.response_ids) for e in exs}) > 1  # uneven response lengths in the batch
    batch = ConsistencyCollator(tok.pad_token_id)(exs)
    model, ref = tiny_model(tok, seed=1).eval(), tiny_model(tok, seed=0).eval()
    c = ConsistencyConfig(output_dir=str(tmp_path), target_model="original", act_weight=1.0, leash_weight=0.1,
                          act_layers=LAYERS, **SETTINGS[setting])
    weights = {"output": 1.0, "bct": c.bct_weight, "act": 1.0, "leash": 0.1}

    @contextlib.contextmanager
    def reference():
        yield ref

    keys = ["output", "act", "act/layer1", "act/layer2", "leash"] + (["bct"] if c.bct_weight else [])
    with torch.no_grad():
        expect = brute_force(model, ref, exs, c, None)
        got = consistency_components(model, reference, batch, c, LAYERS, weights, tok.pad_token_id)
    for k in keys:
        assert got[k].item() == pytest.approx(expect[k].item(), rel=2e-4, abs=1e-6), ("trainer", k)

    # The assembly alone, on tails built by hand in the collator's layout.
    with torch.no_grad():
        W = losses.act_window(c.act_sites, batch["variant_response_len"], batch["variant_suffix_len"])
        var, target, target_var, cur_anchor = hand_built_tails(model, ref, exs, batch, W)
        opts = losses.LossOptions(weights=weights, output_divergence=c.output_divergence,
                                  output_target=c.output_target, temperature=c.temperature,
                                  act_sites=tuple(c.act_sites), act_metric=c.act_metric,
                                  leash_divergence=c.leash_divergence)
        direct = losses.assemble_components(var, target, batch, opts, target_var.logits, cur_anchor.logits,
                                            target.logits)
    for k in keys:
        assert direct[k].item() == pytest.approx(expect[k].item(), rel=2e-4, abs=1e-6), ("assembly", k)

    # The leash on a subset of the anchor rows (leash_fraction): the other components are unchanged.
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        expect_rows = brute_force(model, ref, exs, c, [0, 2])["leash"]
        got_rows = consistency_components(model, reference, batch, c, LAYERS, weights, tok.pad_token_id, rows)
    assert got_rows["leash"].item() == pytest.approx(expect_rows.item(), rel=2e-4, abs=1e-6)
    for k in [k for k in keys if k != "leash"]:
        assert got_rows[k].item() == pytest.approx(got[k].item(), rel=1e-5, abs=1e-7)


def test_prompt_suffix_act_when_the_anchor_is_a_suffix_of_its_variant(tmp_path):
    """Defect 1 as reported: raw text, variant = wrapper + anchor. The ACT window (response + shared suffix + 1) is
    wider than the anchor batch; the sites must not shift (prompt_suffix) nor run off the end (with response)."""
    tok = tiny_tokenizer(chat=False)
    clusters = [Cluster("a", QUESTIONS[0], [Variation(WRAP + QUESTIONS[0], "wrapper")])]
    exs = build_examples(clusters, {"a": RESPONSES[0]}, tok, chat=False)
    assert exs[0].variant_ids[0][-len(exs[0].anchor_ids):] == exs[0].anchor_ids
    batch = ConsistencyCollator(tok.pad_token_id)(exs)
    model = tiny_model(tok).eval()
    for sites in (["prompt_suffix"], ["prompt_suffix", "response"]):
        c = ConsistencyConfig(output_dir=str(tmp_path), target_model="current", leash_weight=0.0, act_weight=1.0,
                              act_layers=[1], act_sites=sites, act_metric="l2")
        with torch.no_grad():
            got = consistency_components(model, None, batch, c, [1], {"output": 1.0, "act": 1.0}, tok.pad_token_id)
        y, a, v = exs[0].response_ids, exs[0].anchor_ids, exs[0].variant_ids[0]
        with torch.no_grad():
            _, ha = _brute_run(model, a + y)
            _, hv = _brute_run(model, v + y)
        offsets = set(range(-len(y) - len(a), -len(y)))  # the whole anchor is the shared suffix
        if "response" in sites:
            offsets |= set(range(-len(y), 0))
        expect = torch.stack([(hv[1][len(v + y) + o] - ha[1][len(a + y) + o]).pow(2).sum() for o in offsets]).mean()
        assert got["act"].item() == pytest.approx(expect.item(), rel=1e-4)


def test_centroid_target_is_finite_and_exact_at_low_temperature(tmp_path):
    """Defect 3: at a low temperature most probabilities underflow float32; the centroid (logsumexp) and the KL
    (xlogy) must stay finite and equal the float64 brute force."""
    tok = tiny_tokenizer(chat=False)
    clusters = _clusters("wrapper_after")
    exs = build_examples(clusters, {c.id: r for c, r in zip(clusters, RESPONSES)}, tok, False, members_per_cluster=3)
    batch = ConsistencyCollator(tok.pad_token_id)(exs)
    model = tiny_model(tok, seed=1).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # logits spread over hundreds of units
    tau = 0.05
    c = ConsistencyConfig(output_dir=str(tmp_path), target_model="current", leash_weight=0.0, output_target="centroid",
                          output_divergence="forward_kl", temperature=tau)
    with torch.no_grad():
        got = consistency_components(model, None, batch, c, [], {"output": 1.0}, tok.pad_token_id)["output"]
        terms = []
        for ex in exs:
            y = ex.response_ids
            members = [ex.anchor_ids] + ex.variant_ids
            runs = [_brute_run(model, m + y)[0].double() for m in members]
            for t in range(len(y)):
                lps = [torch.log_softmax(r[len(m) + t - 1] / tau, -1) for r, m in zip(runs, members)]
                log_mean = torch.logsumexp(torch.stack(lps), 0) - torch.log(torch.tensor(float(len(lps))))
                for lq in lps[1:]:
                    p = log_mean.exp()
                    terms.append(torch.where(p > 0, p * (log_mean - lq), torch.zeros_like(p)).sum())
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-3, abs=1e-5)
