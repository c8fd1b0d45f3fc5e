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
    m = jailbreak.refusal_margins(tiny_lm, tiny_tok, ["Hello there", "What is two plus two?"], chat=True)
    assert len(m) == 2 and all(isinstance(x, float) for x in m)


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
