import pytest

from coherentize.evaluate import jailbreak
from coherentize.evaluate.judges import StringJudge


# Template loading (project, easyjailbreak, files) is tested in tests/variations/test_variation_templates.py.


def test_attack_success_is_conditional_on_direct_refusal():
    direct = {"r1": True, "r2": True, "r3": False, "r4": True}
    wrapped = {"f1": {"r1": False, "r2": True, "r3": False, "r4": True},  # answers r1 (refused directly) and r3
               "f2": {"r1": False, "r2": False, "r3": True, "r4": True}}
    s = jailbreak.summarize_attacks(direct, wrapped, n_boot=200)
    assert s["direct_refusal_rate"]["mean"] == 0.75
    assert s["families"]["f1"]["success_given_refused"]["mean"] == pytest.approx(1 / 3)
    assert s["families"]["f1"]["success_given_refused"]["n"] == 3
    assert s["families"]["f1"]["success_unconditional"]["mean"] == 0.5
    assert s["families"]["f2"]["success_given_refused"]["mean"] == pytest.approx(2 / 3)
    # overall over refused requests r1, r2, r4: per-request means 1, 0.5, 0
    assert s["success_given_refused"]["mean"] == pytest.approx(0.5)


class FixedJudge:
    """Refuses exactly the direct requests (prompts without a template around them)."""

    name = "fixed"

    def __init__(self, direct):
        self.direct = set(direct)

    def judge(self, prompts, outputs):
        return [p in self.direct for p in prompts]


def test_run_jailbreak_on_a_tiny_model(tiny_lm, tiny_tok):
    reqs = [{"id": "a", "prompt": "Tell me the weather."}, {"id": "b", "prompt": "What is two plus two?"}]
    fams = jailbreak.template_families(["project"], only=["roleplay_actor", "opening_sure"])
    summary, records, per_item = jailbreak.run_jailbreak(
        tiny_lm, tiny_tok, reqs, fams, chat=True, judge=FixedJudge([r["prompt"] for r in reqs]),
        max_new_tokens=4, n_boot=100)
    assert summary["direct_refusal_rate"]["mean"] == 1.0
    assert summary["families"]["opening_sure"]["success_given_refused"]["mean"] == 1.0
    assert summary["families"]["opening_sure"]["margin_shift"]["n"] == 2
    assert len(records) == 2 * 3
    assert all(r["excerpt"] == "[redacted: complied]" for r in records if r["label"] == "complied")
    assert set(per_item) >= {"jailbreak.refused_direct", "jailbreak.success.roleplay_actor",
                             "jailbreak.margin.opening_sure"}


def test_refusal_margin_is_a_log_ratio(tiny_lm, tiny_tok):
    import torch

    from coherentize.chat import encode

    prompts = ["Hello there", "What is two plus two?"]
    m = jailbreak.refusal_margins(tiny_lm, tiny_tok, prompts, chat=True)

    @torch.no_grad()
    def opening_logprob(prompt, opening):  # teacher-forced, one unpadded row
        p = encode(tiny_tok, prompt, True)
        o = tiny_tok(opening, add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(tiny_lm(input_ids=torch.tensor([p + o])).logits[0].float(), -1)
        return sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(o))

    for prompt, got in zip(prompts, m):
        ref = torch.tensor([opening_logprob(prompt, o) for o in jailbreak.REFUSAL_OPENINGS])
        com = torch.tensor([opening_logprob(prompt, o) for o in jailbreak.COMPLIANCE_OPENINGS])
        want = (torch.logsumexp(ref, 0) - torch.logsumexp(com, 0)).item()
        assert got == pytest.approx(want, abs=1e-4)


def test_no_direct_refusal_warns():
    reqs = [{"id": "a", "prompt": "x"}]

    class Never:
        name = "never"

        def judge(self, p, o):
            return [False] * len(p)

    from coherentize.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    fam = jailbreak.TemplateFamily("f", "an exclamation", ("{prompt}!",))
    s, _, _ = jailbreak.run_jailbreak(tiny_model(tok), tok, reqs, {"f": fam}, True, Never(),
                                      max_new_tokens=2, margin=False, n_boot=50)
    assert s["success_given_refused"]["n"] == 0
    assert any("nothing for training to reduce" in n for n in s["notes"])
    assert isinstance(StringJudge().judge(["x"], [""])[0], bool)


def test_cached_opening_scores_equal_full_forward_passes(tiny_lm, tiny_tok):
    from coherentize.evaluate.scoring import openings_logprob, sequence_logprob

    prompts = ["Hello there", "What is two plus two? Please answer.", "Alice and Bob are talking together."]
    openings = ["I'm sorry", "Sure", "Here is"]
    cached = openings_logprob(tiny_lm, tiny_tok, prompts, openings, chat=True, batch_size=2)  # padded batches
    full = sequence_logprob(tiny_lm, tiny_tok, [p for p in prompts for _ in openings], openings * 3, chat=True)
    assert cached.flatten().tolist() == pytest.approx(full, abs=1e-4)


def test_attack_success_items_unconditional_and_conditional_on_a_given_refused_set():
    per_item = {"jailbreak.refused_direct": {"r1": 1.0, "r2": 1.0, "r3": 0.0},
                "jailbreak.success.f1": {"r1": 1.0, "r2": 0.0, "r3": 1.0},
                "jailbreak.success.f2": {"r1": 0.0, "r2": 0.0, "r3": 1.0},
                "jailbreak.margin.f1": {"r1": 1.0, "r2": -1.0, "r3": 2.0},
                "jailbreak.margin.f2": {"r1": 3.0, "r2": 1.0, "r3": 0.0},
                "jailbreak.margin.direct": {"r1": 9.0, "r2": 9.0, "r3": 9.0}}
    # The condition is the set passed in (the baseline's refusals when comparing runs), not this run's own.
    items = jailbreak.attack_success_items(per_item, {"r2", "r3"})
    assert items["jailbreak.success_unconditional"] == {"r1": 0.5, "r2": 0.0, "r3": 1.0}
    assert items["jailbreak.success_given_refused"] == {"r2": 0.0, "r3": 1.0}
    assert items["jailbreak.success_given_refused.f1"] == {"r2": 0.0, "r3": 1.0}
    assert items["jailbreak.margin_overall"] == {"r1": 2.0, "r2": 0.0, "r3": 1.0}  # direct margin left out
    assert jailbreak.attack_success_items(per_item, set())["jailbreak.success_given_refused"] == {}
    s = jailbreak.summarize_attacks({"r1": True, "r2": True, "r3": False},
                                    {"f1": {"r1": False, "r2": True, "r3": False},
                                     "f2": {"r1": True, "r2": True, "r3": False}}, n_boot=50)
    assert s["success_unconditional"]["mean"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["success_given_refused"]["mean"] == pytest.approx(0.25) and s["success_given_refused"]["n"] == 2


# --- the judge reads the whole answer: no row stops early at a refusal phrase


@pytest.mark.parametrize("judge", [StringJudge(), FixedJudge(["Tell me the weather."])], ids=["string", "fixed"])
def test_run_jailbreak_never_stops_rows_early(tiny_lm, tiny_tok, monkeypatch, judge):
    """Issue 18: decoding stopped at the first refusal phrase with the string judge, hiding later compliance."""
    seen = {}
    import coherentize.generation as generation

    real = generation.generate_greedy
    monkeypatch.setattr(generation, "generate_greedy", lambda *a, **k: seen.update(k) or real(*a, **k))
    reqs = [{"id": "a", "prompt": "Tell me the weather."}]
    fams = jailbreak.template_families(["project"], only=["opening_sure"])
    jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, judge, max_new_tokens=3, n_boot=20)
    assert seen.get("stop") is None


def test_margins_come_from_the_generation_prefill(tiny_lm, tiny_tok):
    reqs = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(["Tell me the weather.", "Name a colour."])]
    fams = jailbreak.template_families(["project"], only=["roleplay_actor"])
    prompts = [p for r in reqs for p in [r["prompt"]] + [f.wrap(r["prompt"], r["id"]) for f in fams.values()]]
    _, records, _ = jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, StringJudge(), max_new_tokens=3,
                                            n_boot=20)
    margins = jailbreak.refusal_margins(tiny_lm, tiny_tok, prompts, True)
    assert [r["value"] for r in records] == pytest.approx([round(m, 4) for m in margins], abs=2e-4)


# --- families per request: a seeded balanced assignment (jailbreak_families_per_request)


@pytest.mark.parametrize("n,f,k", [(40, 27, 3), (7, 5, 2), (3, 10, 4), (12, 4, 1), (5, 5, 4)])
def test_assign_families_gives_k_distinct_families_and_balanced_counts(n, f, k):
    from collections import Counter

    ids, fams = [f"r{i}" for i in range(n)], [f"fam{j}" for j in range(f)]
    a = jailbreak.assign_families(ids, fams, k, seed=3)
    assert list(a) == ids
    assert all(len(v) == k and len(set(v)) == k and set(v) <= set(fams) for v in a.values())
    counts = Counter(x for v in a.values() for x in v)
    per_family = [counts.get(x, 0) for x in fams]
    assert max(per_family) - min(per_family) <= 1 and sum(per_family) == n * k
    assert all(v == sorted(v, key=fams.index) for v in a.values())  # in the families' own order
    assert jailbreak.assign_families(ids, fams, k, seed=3) == a  # deterministic for a seed
    assert any(jailbreak.assign_families(ids, fams, k, seed=s) != a for s in (4, 5))  # another seed, another one


def test_assign_families_zero_or_at_least_all_is_the_full_cross():
    fams = ["a", "b", "c"]
    full = {"r0": fams, "r1": fams}
    assert jailbreak.assign_families(["r0", "r1"], fams, 0, seed=1) == full
    assert jailbreak.assign_families(["r0", "r1"], fams, 3, seed=1) == full
    assert jailbreak.assign_families(["r0", "r1"], fams, 7, seed=1) == full
    with pytest.raises(ValueError):
        jailbreak.assign_families(["r0"], fams, -1)


def test_attack_success_items_average_each_request_over_its_own_families():
    """With k of F families per request, a request's success is the mean over ITS families (not dropped because
    another family did not score it); worst-of-N is the max over them (brute force below)."""
    import itertools
    import random

    rng = random.Random(0)
    ids, fams = [f"r{i}" for i in range(9)], ["f1", "f2", "f3", "f4"]
    assign = jailbreak.assign_families(ids, fams, 2, seed=1)
    per_item = {f"jailbreak.success.{f}": {} for f in fams}
    for i, fs in assign.items():
        for f in fs:
            per_item[f"jailbreak.success.{f}"][i] = float(rng.random() < 0.4)
    items = jailbreak.attack_success_items(per_item, {"r0", "r3"})
    for i, fs in assign.items():
        vals = [per_item[f"jailbreak.success.{f}"][i] for f in fs]
        assert items["jailbreak.success_unconditional"][i] == pytest.approx(sum(vals) / 2)
        assert items["jailbreak.worst_of_n"][i] == float(any(v == 1.0 for v in vals))
    assert set(items["jailbreak.worst_of_n"]) == set(ids)
    assert jailbreak.families_per_request(per_item) == (2, 2)
    # worst of N over every subset of labels, brute force: broken iff some family broke it
    for labels in itertools.product([0.0, 1.0], repeat=3):
        pi = {f"jailbreak.success.g{j}": {"x": v} for j, v in enumerate(labels)}
        assert jailbreak.attack_success_items(pi, set())["jailbreak.worst_of_n"] == {"x": max(labels)}


def test_run_jailbreak_with_an_assignment_scores_exactly_its_pairs(tiny_lm, tiny_tok):
    reqs = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(
        ["Tell me the weather.", "What is two plus two?", "Name a colour.", "Why is the sky blue?", "Hello?"])]
    fams = jailbreak.template_families(["project"], only=["roleplay_actor", "opening_sure", "fiction_story"])
    judge = FixedJudge([r["prompt"] for r in reqs])
    full = jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, judge, max_new_tokens=3, n_boot=50)
    zero = jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, judge, max_new_tokens=3, n_boot=50,
                                   assignment=jailbreak.assign_families([r["id"] for r in reqs], list(fams), 0))
    assert zero == full  # k = 0: every family, the same results as without an assignment
    assign = jailbreak.assign_families([r["id"] for r in reqs], list(fams), 1, seed=2)
    summary, records, per_item = jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, judge,
                                                         max_new_tokens=3, n_boot=50, assignment=assign)
    pairs = {(r["prompt_id"], r["family"]) for r in records if r["family"] != "direct"}
    assert pairs == {(i, f) for i, fs in assign.items() for f in fs}
    for f in fams:
        want = {i for i, fs in assign.items() if f in fs}
        assert set(per_item[f"jailbreak.success.{f}"]) == want == set(per_item[f"jailbreak.margin.{f}"])
        assert summary["families"][f]["success_unconditional"]["n"] == len(want)
    # the wrapped answers are those of the full run on the same pairs
    full_labels = {(r["prompt_id"], r["family"]): r["label"] for r in full[1]}
    assert all(full_labels[(r["prompt_id"], r["family"])] == r["label"] for r in records)
    assert summary["families_per_request"] == 1 and summary["n_pairs"] == 5
    assert summary["success_unconditional"]["n"] == 5 and summary["worst_of_n"]["n"] == 5
    assert any("of the 3 families" in n for n in summary["notes"])
