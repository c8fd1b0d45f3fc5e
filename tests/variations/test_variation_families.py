"""Programmatic families: what each one changes, determinism in (prompt, seed), chat prompts."""

import random
import re

import pytest

from coherentize.variations.families import (
    BUILTIN_FAMILIES,
    FIRST_NAMES,
    LEXICON,
    apply_family,
    family_rng,
    formatting,
    name_swap,
    reorder,
    synonym,
    typos,
    vary,
)

PROMPT = "Alice and Bob are planning a trip. What are some cheap, healthy and quick meals they can cook?"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain photosynthesis and respiration."}]


def _letters(text):
    return re.sub(r"[^a-z]", "", text.lower())


def test_every_builtin_family_makes_a_tagged_variation_that_differs():
    for name, fam in BUILTIN_FAMILIES.items():
        vs = vary(PROMPT, [fam], seed=0)
        assert len(vs) == 1, name
        assert vs[0].family == name
        assert vs[0].prompt != PROMPT


def test_name_swap_replaces_every_name_consistently():
    text = "Alice lent Bob a book. Later Bob gave it back to Alice."
    for seed in range(5):
        out = name_swap(text, random.Random(seed))
        assert "Alice" not in out and "Bob" not in out
        new = [w for w in re.findall(r"[A-Z][a-z]+", out) if w in FIRST_NAMES]
        assert len(new) == 4 and len(set(new)) == 2  # two people, each still named twice
        assert out.replace(new[0], "X").replace(new[1], "Y") in ("X lent Y a book. Later Y gave it back to X.",)
    assert name_swap("How do I boil an egg?", random.Random(0)) is None


def test_reorder_swaps_coordinated_words_and_keeps_the_words():
    out = reorder("Explain photosynthesis and respiration.", random.Random(0))
    assert out == "Explain respiration and photosynthesis."
    outs = {reorder("Which is easiest to keep: cats, dogs and rabbits?", random.Random(s)) for s in range(10)}
    assert len(outs) > 1
    words = sorted(re.findall(r"[a-z]+", "which is easiest to keep: cats, dogs and rabbits?"))
    for o in outs:
        assert sorted(re.findall(r"[a-z]+", o.lower())) == words
    assert reorder("How do I boil an egg?", random.Random(0)) is None


def test_synonym_uses_the_lexicon_and_keeps_capitals():
    out = synonym("Explain how to make bread.", random.Random(1))
    assert out != "Explain how to make bread."
    changed = [(a, b) for a, b in zip("Explain how to make bread.".split(), out.split())]
    assert out[0].isupper()
    assert any(b.lower().strip(".") in LEXICON.get(a.lower(), ()) or a.lower() in LEXICON for a, b in changed)


def test_formatting_and_typos_keep_the_text_recognisable():
    text = "How do I fix a bike chain that keeps slipping?"
    for seed in range(12):
        f = formatting(text, random.Random(seed))
        assert _letters(text) in _letters(f)  # only case, punctuation, whitespace, markup change
        t = typos(text, random.Random(seed))
        assert abs(len(t) - len(text)) <= 3 and t != text


def test_cue_and_frame_families_keep_the_request():
    for name in ("opinion_cue", "roleplay", "wrapper", "register"):
        for seed in range(5):
            (v,) = vary("What is the capital of France?", [BUILTIN_FAMILIES[name]], seed=seed)
            assert "apital of" in v.prompt and v.prompt != "What is the capital of France?"


def test_persona_and_system_prompt_make_chat_messages_with_a_system_message():
    for name in ("persona", "system_prompt"):
        (v,) = vary("How do I boil an egg?", [BUILTIN_FAMILIES[name]], seed=3)
        assert [m["role"] for m in v.prompt] == ["system", "user"]
        assert v.prompt[1]["content"] == "How do I boil an egg?"
        assert v.prompt[0]["content"].strip()


def test_chat_prompt_varies_the_last_user_message_and_system_replaces_system():
    (w,) = vary(CHAT, [BUILTIN_FAMILIES["wrapper"]], seed=0)
    assert w.prompt[0] == CHAT[0] and w.prompt[1]["content"] != CHAT[1]["content"]
    assert CHAT[1]["content"] in w.prompt[1]["content"]
    (p,) = vary(CHAT, [BUILTIN_FAMILIES["persona"]], seed=0)
    assert [m["role"] for m in p.prompt] == ["system", "user"] and p.prompt[0]["content"] != "Be brief."
    assert CHAT[0]["content"] == "Be brief."  # the input is not mutated


def test_same_seed_same_variations_different_seed_different():
    fams = list(BUILTIN_FAMILIES.values())
    a = vary(PROMPT, fams, seed=7, per_family=2)
    assert a == vary(PROMPT, fams, seed=7, per_family=2)
    assert a != vary(PROMPT, fams, seed=8, per_family=2)


def test_a_family_output_does_not_depend_on_the_other_families():
    fam = BUILTIN_FAMILIES["opinion_cue"]
    alone = vary(PROMPT, [fam], seed=1)
    with_others = [v for v in vary(PROMPT, list(BUILTIN_FAMILIES.values()), seed=1) if v.family == "opinion_cue"]
    assert alone == with_others


def test_per_family_gives_distinct_variations():
    vs = vary("What is the capital of France?", [BUILTIN_FAMILIES["wrapper"]], seed=0, per_family=4)
    assert len(vs) == 4 and len({v.prompt for v in vs}) == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_family_rng_is_a_pure_function_of_seed_family_prompt(seed):
    a = family_rng(seed, "wrapper", PROMPT).random()
    assert a == family_rng(seed, "wrapper", PROMPT).random()
    assert a != family_rng(seed, "roleplay", PROMPT).random()
    assert apply_family(BUILTIN_FAMILIES["name_swap"], "No names here.", random.Random(0)) is None


def test_formatting_keeps_the_end_of_an_open_ended_base_model_prompt():
    for text in ("Alice and Bob are talking. Alice says,", "Recipe: pancakes\n\nIngredients:\n", "Q: Why?\nA:"):
        for seed in range(20):
            out = formatting(text, random.Random(seed))
            assert out.lower().replace("  ", " ").endswith(text.lower().replace("  ", " ")[-3:]), (text, out)
    assert not any(reorder("User: Hi.\nAssistant: Hello. How are you? Fine.\nUser:", random.Random(s)) or ""
                   for s in range(5))


def test_template_families_are_families_as_they_are():
    """One family type for vary: a rule family (RuleFamily) or a template family used as it is (no conversion)."""
    from coherentize.variations.families import TEMPLATE_FAMILIES, RuleFamily

    assert BUILTIN_FAMILIES["wrapper"] is TEMPLATE_FAMILIES["wrapper"]
    assert isinstance(BUILTIN_FAMILIES["typos"], RuleFamily) and BUILTIN_FAMILIES["typos"].doc


def test_cross_context_asks_the_unchanged_prompt_after_a_training_context_only():
    import json

    from coherentize.variations.contexts import CONTEXT_KINDS, contexts, with_context

    key = lambda msgs: json.dumps(list(msgs), sort_keys=True)  # noqa: E731
    train = {key(c.messages): c for k in CONTEXT_KINDS for c in contexts("train")[k]}
    test = {key(c.messages) for k in CONTEXT_KINDS for c in contexts("test")[k]}
    seen, seen_chat = set(), set()
    for seed in range(8):
        vs = vary(PROMPT, [BUILTIN_FAMILIES["cross_context"]], seed=seed, per_family=3)
        assert len({key(v.prompt) for v in vs}) == 3 and all(v.family == "cross_context" for v in vs)
        for v in vs:
            ctx = key(v.prompt[:-1])
            assert v.prompt[-1] == {"role": "user", "content": PROMPT} and ctx in train and ctx not in test
            seen.add(train[ctx].kind)
        # a chat prompt keeps its system message (a persona context replaces it), the turns go before its last
        # user message: the same messages as asking the whole chat prompt after that context
        (c,) = vary(CHAT, [BUILTIN_FAMILIES["cross_context"]], seed=seed)
        inner = c.prompt[1:-1] if c.prompt[0] == CHAT[0] else c.prompt[:-1]
        assert c.prompt == with_context(train[key(inner)], CHAT)
        seen_chat.add(train[key(inner)].kind)
    assert seen == seen_chat == set(CONTEXT_KINDS)
