"""Programmatic variation families: small pure functions of (text, rng) over data files (word lists in
data/lexicons/, templates in data/templates/variations.yaml).

A family turns the text of a prompt into one variation, or ``None`` where it does not apply (no name to swap, no
coordinated phrase to reorder). Everything random goes through the ``random.Random`` it is given, so a family is a
pure function of (prompt, seed). ``Family`` is what ``vary`` needs of a family (a name, a doc line, ``make``): a rule
family is a ``RuleFamily`` (a function of this file); template families (wrappers, cues, personas) are
``TemplateFamily`` objects, the same class a user's YAML/JSON template file builds (see ``templates.py``), used as
they are. Adding a template family is adding an entry to data/templates/variations.yaml, adding a rule family an
entry to ``BUILTIN_FAMILIES``.

A family may return chat messages (a list of ``{"role", "content"}``): the persona and system-prompt framings put a
system message in front of the user's text.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from coherentize.chat import Prompt
from coherentize.clusters import Variation
from coherentize.errors import CoherentizeError
from coherentize.variations.lexicons import contractions, first_names, register_phrases, synonyms
from coherentize.variations.templates import (  # noqa: F401  (SLOT, TemplateFamily: re-exported)
    SLOT, TemplateFamily, lower_first, template_families,
)


class Family(Protocol):
    """A named way of varying a prompt: ``make(text, rng)`` returns a variation or None (not applicable). RuleFamily
    and TemplateFamily are both one."""

    name: str
    doc: str

    def make(self, text: str, rng: random.Random) -> Prompt | None: ...


@dataclass(frozen=True)
class RuleFamily:
    """A rule family: one function of (text, rng) of this file."""

    name: str
    doc: str
    make: Callable[[str, random.Random], Prompt | None]


# ---------------------------------------------------------------------------------------------------------------
# Word lists (data/lexicons/*.yaml, written for this project).

FIRST_NAMES = first_names()
_NAME_SET = frozenset(FIRST_NAMES)
LEXICON: dict[str, tuple[str, ...]] = synonyms()
CONTRACTIONS = contractions()


# ---------------------------------------------------------------------------------------------------------------
# Helpers.

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def _match_case(src: str, repl: str) -> str:
    if src.isupper() and len(src) > 1:
        return repl.upper()
    if src[:1].isupper():
        return repl[:1].upper() + repl[1:]
    return repl


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ---------------------------------------------------------------------------------------------------------------
# Rule families.


def name_swap(text: str, rng: random.Random) -> str | None:
    """Replace the person names in the text by other names (consistently), and swap 'X and Y' pairs of names."""
    names = [w for w in dict.fromkeys(_WORD.findall(text)) if w in _NAME_SET]
    if not names:
        return None
    others = [n for n in FIRST_NAMES if n not in names]
    new = dict(zip(names, rng.sample(others, len(names))))
    out = re.sub(r"\b(" + "|".join(map(re.escape, names)) + r")\b", lambda m: new[m.group(1)], text)
    # "Carol and Dave" -> "Dave and Carol": the order of a pair of people should not matter either.
    if rng.random() < 0.5:
        alt = "|".join(map(re.escape, new.values()))
        pair = re.compile(r"\b(" + alt + r") (and|or) (" + alt + r")\b")
        out = pair.sub(lambda m: f"{m.group(3)} {m.group(2)} {m.group(1)}", out)
    return out


_PAIR = re.compile(r"(?<!, )\b([a-z]+) (and|or) ([a-z]+)\b")
_LIST3 = re.compile(r"\b([A-Za-z'-]+), ([A-Za-z'-]+(?: [A-Za-z'-]+)?),? (and|or) ([A-Za-z'-]+)\b")
_STOP = frozenset("a an the to of in on at for with by from is are was be my your our their his her its i you we "
                  "they it this that what how why when where who which do does can could should would will not "
                  "so then than also".split())


def reorder(text: str, rng: random.Random) -> str | None:
    """Reorder coordinated words ('cats and dogs' -> 'dogs and cats', 'A, B and C' -> 'C, A and B') or, for a
    prompt of three or more sentences, move a context sentence later (the last sentence, the request, stays last)."""
    options = []
    for m in _LIST3.finditer(text):
        items = [m.group(1), m.group(2), m.group(4)]
        if not any(w.lower() in _STOP for w in items):
            options.append(("list", m))
    for m in _PAIR.finditer(text):
        a, b = m.group(1), m.group(3)
        if a not in _STOP and b not in _STOP and a != b:
            options.append(("pair", m))
    sents = _sentences(text)
    if len(sents) >= 3 and "\n" not in text:  # a multi-line text (a transcript, a list) has an order of its own
        options.append(("sentences", None))
    if not options:
        return None
    kind, m = rng.choice(options)
    if kind == "pair":
        return text[: m.start()] + f"{m.group(3)} {m.group(2)} {m.group(1)}" + text[m.end() :]
    if kind == "list":
        items = [m.group(1), m.group(2), m.group(4)]
        perm = items[:]
        while perm == items:
            rng.shuffle(perm)
        if items[0][:1].isupper() and not items[0].isupper():  # keep a capital at the start of a sentence
            perm = [perm[0][:1].upper() + perm[0][1:]] + [lower_first(w) if w == items[0] else w for w in perm[1:]]
        return text[: m.start()] + f"{perm[0]}, {perm[1]} {m.group(3)} {perm[2]}" + text[m.end() :]
    i = rng.randrange(len(sents) - 2)
    return " ".join(sents[:i] + sents[i + 1 : -1] + [sents[i], sents[-1]])


def synonym(text: str, rng: random.Random) -> str | None:
    """Replace one to three words by near-synonyms from LEXICON."""
    hits = [m for m in _WORD.finditer(text) if m.group(0).lower() in LEXICON]
    if not hits:
        return None
    chosen = sorted(rng.sample(hits, min(len(hits), rng.randint(1, 3))), key=lambda m: m.start())
    out, last = [], 0
    for m in chosen:
        word = m.group(0)
        out.append(text[last : m.start()])
        out.append(_match_case(word, rng.choice(LEXICON[word.lower()])))
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def _bullets(text: str) -> str | None:
    sents = _sentences(text)
    return "\n".join(f"- {s}" for s in sents) if len(sents) >= 2 else None


# (format, keeps the end of the text): only those that keep the end apply to an open-ended text ("Alice says,"),
# whose last characters are where a base model continues.
_FORMATS: tuple[tuple[Callable[[str], str | None], bool], ...] = (
    (lambda t: t.lower(), True),
    (lambda t: t.upper() if len(t) < 200 else None, True),
    (lambda t: "   " + t.replace(" ", "  "), True),
    (lambda t: t.replace(". ", ".\n\n") if ". " in t else None, True),
    (lambda t: t.rstrip(".?!") if t.rstrip(".?!") != t else None, False),
    (lambda t: t + "?" if t.endswith("?") else (t[:-1] + "!" if t.endswith(".") else None), False),
    (lambda t: f"**{t}**", False),
    (lambda t: f"### Question\n\n{t}", False),
    (lambda t: f"```\n{t}\n```", False),
    (lambda t: f"\"{t}\"", False),
    (_bullets, False),
)


def _open_ended(text: str) -> bool:
    """Text a base model is meant to continue: it does not end in sentence punctuation (or ends in whitespace)."""
    return text != text.rstrip() or text.rstrip()[-1:] not in tuple(".?!)\"'")


def formatting(text: str, rng: random.Random) -> str | None:
    """Surface formatting: case, whitespace, paragraph breaks, end punctuation, markdown emphasis/heading/code
    block, quotes, bullets instead of prose. An open-ended text ("Alice says,") keeps its end."""
    open_end = _open_ended(text)
    for i in rng.sample(range(len(_FORMATS)), len(_FORMATS)):
        fmt, keeps_end = _FORMATS[i]
        out = fmt(text) if keeps_end or not open_end else None
        if out is not None and out != text:
            return out
    return None


_TYPO_OPS = ("swap", "drop", "double")


def typos(text: str, rng: random.Random) -> str | None:
    """One to three keyboard slips (swapped, dropped or doubled letters) inside words of four letters or more."""
    words = [m for m in re.finditer(r"[A-Za-z]{4,}", text)]
    if not words:
        return None
    chars = list(text)
    for m in sorted(rng.sample(words, min(len(words), rng.randint(1, 3))), key=lambda m: -m.start()):
        i = rng.randrange(m.start() + 1, m.end() - 1)
        op = rng.choice(_TYPO_OPS)
        if op == "swap":
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == "drop":
            del chars[i]
        else:
            chars.insert(i, chars[i])
    out = "".join(chars)
    return out if out != text else None


_REGISTER = register_phrases()


def register(text: str, rng: random.Random) -> str:
    """Formal or casual register: contractions expanded or made, a formal or casual opener and closer."""
    if rng.random() < 0.5:
        out = text
        for long, short in CONTRACTIONS.items():
            out = re.sub(r"\b" + re.escape(short) + r"\b", lambda m, long=long: _match_case(m.group(0), long), out,
                         flags=re.IGNORECASE)
        return rng.choice(_REGISTER["formal_openers"]) + out
    out = text
    for long, short in CONTRACTIONS.items():
        out = re.sub(r"\b" + re.escape(long) + r"\b", lambda m, short=short: _match_case(m.group(0), short), out,
                     flags=re.IGNORECASE)
    out = lower_first(out)
    return rng.choice(_REGISTER["casual_openers"]) + out.rstrip(".") + rng.choice(_REGISTER["casual_closers"])


def cross_context(text: str, rng: random.Random) -> list[dict]:
    """The prompt asked after a conversation context: prior turns on other topics, a persona or a task done before.

    A train-split context of variations/contexts.py (the cross_context evaluation probe asks its questions after
    test-split ones only), as chat messages before the unchanged text."""
    from coherentize.variations.contexts import CONTEXT_KINDS, contexts, with_context

    pool = contexts("train")
    return with_context(rng.choice([c for k in CONTEXT_KINDS for c in pool[k]]), text)


# ---------------------------------------------------------------------------------------------------------------
# Template families (data/templates/variations.yaml, the one template format of templates.py).

TEMPLATE_FAMILIES: dict[str, TemplateFamily] = template_families(["built-in"])

BUILTIN_FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        *(RuleFamily(fn.__name__, fn.__doc__.splitlines()[0], fn)
          for fn in (name_swap, reorder, synonym, formatting, typos, register, cross_context)),
        *TEMPLATE_FAMILIES.values(),
    )
}


# ---------------------------------------------------------------------------------------------------------------
# Applying families to a prompt.


def family_rng(seed: int, family: str, prompt: Prompt) -> random.Random:
    """The random stream of one family on one prompt: a pure function of (seed, family, prompt), so adding a family
    or a prompt elsewhere in the file never changes the variations of this one. (str seeds hash with SHA-512,
    independent of PYTHONHASHSEED.)"""
    return random.Random(f"{seed}\x1f{family}\x1f{_canonical(prompt)}")


def _canonical(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def last_user_text(prompt: Prompt) -> str | None:
    """The text a family varies: the whole string, or the content of the last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else None


def replace_user_text(prompt: Prompt, new: Prompt) -> Prompt:
    """Put a family's output back into the prompt. For chat prompts the last user message gets the new text, a
    system message in the output replaces the prompt's own system message, and turns the output puts before its last
    user message (cross_context) go just before the prompt's last user message."""
    if isinstance(prompt, str):
        return new
    system = [m for m in new if m["role"] == "system"] if isinstance(new, list) else []
    user = new if isinstance(new, str) else [m for m in new if m["role"] == "user"][-1]["content"]
    turns = [dict(m) for m in new[:-1] if m["role"] != "system"] if isinstance(new, list) else []
    msgs = [dict(m) for m in prompt]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    msgs[last]["content"] = user
    msgs = msgs[:last] + turns + msgs[last:]
    if system:
        msgs = [dict(m) for m in system] + [m for m in msgs if m["role"] != "system"]
    return msgs


def apply_family(family: Family, prompt: Prompt, rng: random.Random) -> Prompt | None:
    text = last_user_text(prompt)
    if text is None:
        return None
    out = family.make(text, rng)
    return None if out is None else replace_user_text(prompt, out)


def vary(prompt: Prompt, families: Sequence[Family], seed: int, per_family: int = 1) -> list[Variation]:
    """Up to per_family distinct variations of prompt from each family, in family order, each tagged with its
    family. A family that does not apply to the prompt (no name, no coordinated phrase) contributes none."""
    seen = {_canonical(prompt)}
    out: list[Variation] = []
    for fam in families:
        rng = family_rng(seed, fam.name, prompt)
        got = 0
        for _ in range(4 * per_family):  # a few retries: a template family may draw the same template twice
            if got == per_family:
                break
            v = apply_family(fam, prompt, rng)
            if v is None:
                continue
            key = _canonical(v)
            if key in seen:
                continue
            seen.add(key)
            out.append(Variation(v, fam.name))
            got += 1
    return out


def load_template_families(path: str | os.PathLike) -> list[TemplateFamily]:
    """A user's file of variation families (for ``augment --templates``; read by templates.template_families); a
    name clashing with a built-in family is an error."""
    out = list(template_families([path]).values())
    for i, t in enumerate(out):
        if t.name in BUILTIN_FAMILIES or t.name == "paraphrase":
            raise CoherentizeError(f"{path}: families[{i}].name: family {t.name!r} already exists; choose another name.")
    return out
