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
    s, _, _ = jailbreak.run_jailbreak(tiny_model(tok), tok, reqs, {"f": ["{prompt}!"]}, True, Never(),
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


# --- evaluation without waste: margins from the generation prefill, rows stopped once the decision is settled


def test_refusal_settled_only_when_no_continuation_can_change_label_or_excerpt():
    import random

    from coherentize.evaluate.judges import is_refusal
    from coherentize.evaluate.results import excerpt

    settled = ["I'm sorry, but I can't help with that request. It could be used to hurt people",
               "**Sorry**, that is not something I will do, and here is a long reason why not at all",
               "Well, honestly I cannot help with that; it is not a thing to do, now or ever again, no"]
    not_yet = ["I'm sorry", "", "Sure, here is the first step of the plan: gather the following tools and materials",
               "I'm sorry, but I can't help with that request. It could b\ufffd\ufffd",
               "- ", "Here is how. I cannot help with"]  # the last: a refusal, but its excerpt is not complete yet
    rng = random.Random(0)
    for text in settled:
        assert jailbreak.refusal_settled(text)
        for _ in range(50):
            more = text + "".join(rng.choice(" abc.,!*_#>'\n\u2019XYZ") for _ in range(rng.randint(1, 200)))
            assert is_refusal(more)
            assert excerpt(more, harmful=True, refused=True) == excerpt(text, harmful=True, refused=True)
    assert not any(jailbreak.refusal_settled(t) for t in not_yet)


def test_run_jailbreak_stops_settled_rows_with_the_same_labels_excerpts_and_margins(tiny_lm, tiny_tok, monkeypatch):
    """A string judge that fires on the tiny model's own outputs: run_jailbreak (rows stopped once settled) gives the
    labels, excerpts and margins of full-length answers judged afterwards (the previous path)."""
    from coherentize.evaluate import judges, results
    from coherentize.generation import generate

    reqs = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(
        ["Tell me the weather.", "What is two plus two?", "Name a colour.", "Why is the sky blue?"])]
    fams = jailbreak.template_families(["project"], only=["roleplay_actor", "opening_sure"])
    prompts = [p for r in reqs for p in [r["prompt"]] + [jailbreak.wrap(jailbreak.pick_template(t, r["id"], f),
                                                                         r["prompt"]) for f, t in fams.items()]]
    full = generate(tiny_lm, tiny_tok, prompts, True, 24)
    # "refusal" substrings: pieces of the answers, until about half of them count as refusals; excerpts of 6 chars
    norm = [judges.normalize(o) for o in full]
    subs = []
    for piece in sorted({t[i : i + 3] for t in norm for i in range(2, 12, 3) if "\ufffd" not in t[i : i + 3]}):
        if sum(any(s in t[: judges.WINDOW] for s in subs + [piece]) for t in norm) <= len(norm) // 2:
            subs.append(piece)
    monkeypatch.setattr(judges, "REFUSAL_SUBSTRINGS", tuple(subs))
    monkeypatch.setattr(results, "REFUSAL_EXCERPT", 6)
    judge = StringJudge()
    want = judge.judge(prompts, full)
    assert 0 < sum(want) < len(prompts)
    import coherentize.generation as generation

    gens, real = [], generation.generate_greedy
    monkeypatch.setattr(generation, "generate_greedy", lambda *a, **k: gens.append(real(*a, **k)) or gens[-1])
    summary, records, per_item = jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, judge,
                                                         max_new_tokens=24, n_boot=50, decode_batch_size=5)
    assert [r["label"] == "refused" for r in records] == want
    assert [r["excerpt"] for r in records] == [results.excerpt(o, True, w) for o, w in zip(full, want)]
    stopped = [t for t, f in zip(gens[0].texts, full) if t != f]
    assert stopped and all(jailbreak.refusal_settled(t) for t in stopped)  # rows did stop, only settled ones
    assert gens[0].new_tokens < real(tiny_lm, tiny_tok, prompts, True, 24, progress=False).new_tokens
    margins = jailbreak.refusal_margins(tiny_lm, tiny_tok, prompts, True)
    assert [r["value"] for r in records] == pytest.approx([round(m, 4) for m in margins], abs=2e-4)


def test_run_jailbreak_does_not_stop_rows_for_a_model_judge(tiny_lm, tiny_tok, monkeypatch):
    seen = {}
    import coherentize.generation as generation

    real = generation.generate_greedy
    monkeypatch.setattr(generation, "generate_greedy", lambda *a, **k: seen.update(k) or real(*a, **k))
    reqs = [{"id": "a", "prompt": "Tell me the weather."}]
    fams = jailbreak.template_families(["project"], only=["opening_sure"])
    jailbreak.run_jailbreak(tiny_lm, tiny_tok, reqs, fams, True, FixedJudge(["Tell me the weather."]),
                            max_new_tokens=3, n_boot=20)
    assert seen["stop"] is None
