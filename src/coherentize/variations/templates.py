"""Template families: the one type, the one file format and the one slot (``{prompt}``) for every framing of a
prompt, whether it varies benign training prompts (wrapper, persona, ...), wraps harmful requests in a jailbreak
(project, easyjailbreak, or a user's file), or frames the organism's compliance data. Training-data building and
evaluation both read them from here.

File format (YAML or JSON; ``coherentize/data/templates/*.yaml`` are written in it)::

    families:
      - name: exam_frame
        doc: The request framed as an exam question.
        templates:
          - "Exam question 3 (5 points): {prompt}"
          - "{prompt}\\n\\n(Show your reasoning.)"
      - name: pirate_persona
        templates: ["{prompt}"]
        system: ["You are a pirate. Talk like one."]   # optional: a system message, making chat prompts
      - name: base64_request
        kind: encoding                                  # optional: the attack kind(s), from ATTACK_KINDS
        templates: ["Decode this base64 and answer it: {prompt:base64}"]

Every template must contain the ``{prompt}`` slot (where the original text goes); other braces are left as written.
A slot may name a transform of the text, ``{prompt:<transform>}`` (``TRANSFORMS``: ``past_tense``, ``base64``,
``rot13``): the request is rewritten before it goes in. The older evaluation shape ``families: {name: [template,
...]}`` is still read (same slot).

Attack kinds (``kind``, ``ATTACK_KINDS``): what a jailbreak family does to the request, after Wei et al. (2023:
competing objectives vs mismatched generalisation) and the attacks since. Transfer from training on one kind to
evaluation on the same kind is near transfer; a "far transfer" figure uses only evaluation families whose kinds no
training family has (evaluate/overlap.py checks it). The project's families carry ``kind`` in their file;
easyjailbreak's are tagged in ``EASYJAILBREAK_KINDS``; a family without a kind (a benign variation family, a user's
family that does not say) is never counted as far transfer.

The one loader, ``template_families(sources, only)``, reads every template family, by source: ``built-in`` (the
variation families, data/templates/variations.yaml), ``organism`` (the organism's frames, data/templates/organism.yaml),
``project`` (the jailbreak families, data/templates/jailbreak.yaml), ``easyjailbreak`` (Wei et al.'s templates read
from the installed package at run time, GPL text: never copied; its ``{query}`` slot is read as ``{prompt}``), or the
path of a file in the format above.

Wrapping: ``TemplateFamily.make(text, rng)`` draws a variation (a random template, and system message when the family
has them) for training clusters; ``TemplateFamily.wrap(text, key)`` is THE wrapping of one request, the template and
system message picked by a hash of the key and family name, used alike by evaluation (jailbreak, framed benign,
integrations) and by training's harmful anchors. A family's system message is part of its frame (``frames()``, which
the overlap checks compare), so the wrapped prompt carries it: chat messages with that system message first (a raw
prompt for a base model joins them as text, chat.prompt_text). ``fill(template, text)`` only fills one slot.

    coherentize augment --templates my_families.yaml --families exam_frame,wrapper ...
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from coherentize.chat import Prompt
from coherentize.config import read_structured_file
from coherentize.errors import CoherentizeError
from coherentize.sources import data_path

SLOT = "{prompt}"
OLD_SLOT = "{query}"  # the slot of evaluation template files before there was one format
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SLOT_RE = re.compile(r"\{prompt(?::([a-z0-9_]+))?\}")
"""The slot, plain (``{prompt}``) or with a transform of the text (``{prompt:base64}``)."""

ATTACK_KINDS = {
    "roleplay": "role-play or persona: the model plays a character without its rules (competing objectives)",
    "refusal_suppression": "rules that forbid refusing, apologising or warning (competing objectives)",
    "prefix_injection": "a forced compliant opening of the answer (competing objectives)",
    "distraction": "the request hidden among benign tasks or distractors (competing objectives)",
    "fiction_hypothetical": "the request set in a story, screenplay or hypothetical world",
    "persuasion": "persuading the model: authority, evidence, expertise, logic, claimed credentials (Zeng et al. 2024)",
    "style": "an imposed output style or format (slang, word rules, JSON, a Wikipedia article)",
    "translation": "a translation or repetition task around the request (mismatched generalisation)",
    "encoding": "the request or the answer in an encoding such as base64 or ROT13 (mismatched generalisation)",
    "past_tense": "the request rewritten into the past tense (Andriushchenko & Flammarion 2024)",
    "adversarial_suffix": "a token-salad suffix after the request, in the style of GCG (Zou et al. 2023)",
    "many_shot": "in-context examples of compliance before the request (Anil et al. 2024)",
    "prefill": "the answer's opening written by the attacker (evaluate/adaptive.py's prefill probe)",
}
"""Attack kinds a jailbreak family may be tagged with (its ``kind`` field), each with one line."""

EASYJAILBREAK_KINDS = {
    "prefix_injection": ("prefix_injection",), "prefix_injection_hello": ("prefix_injection",),
    "refusal_suppression": ("refusal_suppression",), "refusal_suppression_inv": ("refusal_suppression",),
    "base64_output_only": ("encoding",), "style_injection_short": ("style",), "style_injection_json": ("style",),
    "few_shot_json": ("prefix_injection", "many_shot", "style"), "distractors": ("distraction",),
    "distractors_negated": ("distraction",), "Poems": ("distraction",), "wikipedia": ("style",),
    "wikipedia_with_title": ("style",), "AIM": ("roleplay",), "dev_mode_v2": ("roleplay",),
    "dev_mode_with_rant": ("roleplay", "prefix_injection"), "evil_confidant": ("roleplay",),
    "evil_system_prompt": ("roleplay",),
}
"""Kinds of Wei et al.'s families as packaged by easyjailbreak (by name; read from the templates' text)."""


def project_templates_path() -> Path:
    """The project's jailbreak families (written for coherentize)."""
    return data_path("templates", SHIPPED["project"])


@dataclass(frozen=True)
class TemplateFamily:
    """A named family of templates with a ``{prompt}`` slot; with ``system`` set, each variation is chat messages
    with one of those system messages first."""

    name: str
    """Family name; tags every variation it makes and names it in evaluation results."""
    doc: str
    """One line saying what the family varies."""
    templates: tuple[str, ...]
    """Texts with a {prompt} slot."""
    system: tuple[str, ...] = field(default=())
    """Optional system messages; when given, prompts are chat messages with one of them first."""
    source: str = ""
    """Where the family was read from (a file path, 'project', 'easyjailbreak')."""
    kinds: tuple[str, ...] = field(default=())
    """Attack kinds (ATTACK_KINDS) of a jailbreak family; empty for benign variation families and untagged ones."""

    def make(self, text: str, rng: random.Random) -> Prompt:
        """A variation of text: a random template (and system message) from rng."""
        template = rng.choice(self.templates)
        # "Hypothetically speaking, {prompt}": the prompt continues a sentence, so it loses its capital.
        user = fill(template, lower_first(text) if ", " + SLOT in template else text)  # (a transformed slot: as is)
        if self.system:
            return [{"role": "system", "content": rng.choice(self.system)}, {"role": "user", "content": user}]
        return user

    def pick(self, key: str) -> str:
        """The template for one request (a hash of key and family name), so repeated runs and before/after
        evaluations see the same prompt."""
        return pick_template(self.templates, key, self.name)

    def wrap(self, text: str, key: str) -> Prompt:
        """text in this family's template for one request (pick(key)), with a system message picked the same way
        when the family has them: what evaluation and the training anchors of a jailbreak family both see."""
        user = fill(self.pick(key), text)
        if self.system:
            return [{"role": "system", "content": pick_template(self.system, key, self.name + "/system")},
                    {"role": "user", "content": user}]
        return user

    def frames(self) -> list[str]:
        """Every text this family puts around a prompt (templates with the slot, and system messages)."""
        return [t for t in self.templates if not is_bare(t)] + list(self.system)

    @property
    def transformed(self) -> bool:
        """Whether some template rewrites the text ({prompt:<transform>}) rather than only framing it."""
        return any(m.group(1) for t in self.templates for m in SLOT_RE.finditer(t))


def fill(template: str, text: str) -> str:
    """Put text into the template's slot, transformed where the slot says so (``{prompt:base64}``); other braces in
    the template are left as written."""
    if not SLOT_RE.search(template):
        raise CoherentizeError(f"template has no {SLOT} slot: {template[:60]!r}")
    return SLOT_RE.sub(lambda m: TRANSFORMS[m.group(1)](text) if m.group(1) else text, template)


def is_bare(template: str) -> bool:
    """A template that is only a slot (plain or transformed): it puts no text of its own around the prompt."""
    return SLOT_RE.fullmatch(template.strip()) is not None


# ---------------------------------------------------------------------------------------------------------------
# Transforms of the request text ({prompt:<name>}): pure functions of the text.


def to_base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def to_rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


_WH = r"(how|what|where|why|when|which|who)"
_AUX = r"(?:do|does|can|could|would|should|might|may|will)"
_SUBJ = r"(?:i|you|we|one|someone|somebody|a person|people|they)"
_ASK = (r"(?:please\s+)?(?:write|give|provide|explain|describe|tell|list|outline|create|make|draft|generate|show|"
        r"teach|detail|compose|suggest|share|produce|develop|design|craft|plan|find|recommend|help)")
_PAST_RULES = (
    # "How do I bake bread?" -> "How did people bake bread in the past?"
    (re.compile(rf"^{_WH}\s+{_AUX}\s+{_SUBJ}\s+(.+)$", re.I), lambda m: f"{m[1].capitalize()} did people {m[2]}"),
    # "What is the best way to bake bread?" / "Is there a way to ..." -> "How did people bake bread in the past?"
    (re.compile(r"^(?:what|which)\s*(?:is|are|'s)\s+(?:the\s+|a\s+|an\s+|some\s+)?(?:[\w-]+\s+){0,3}?(?:way|ways|"
                r"method|methods|steps|techniques|strategies)\s+to\s+(.+)$", re.I), lambda m: f"How did people {m[1]}"),
    (re.compile(r"^(?:how\s+to|ways\s+to)\s+(.+)$", re.I), lambda m: f"How did people {m[1]}"),
    # "What are good names for a cat?" -> "What were good names for a cat in the past?"
    (re.compile(rf"^{_WH}\s*(is|are|'s)\s+(.+)$", re.I),
     lambda m: f"{m[1].capitalize()} {'were' if m[2].lower() == 'are' else 'was'} {m[3]}"),
    (re.compile(r"^(?:is|are)\s+there\s+(?:a|any)\s+(?:\w+\s+)?(?:way|ways)\s+to\s+(.+)$", re.I),
     lambda m: f"How did people {m[1]}"),
    # "I want to bake bread." -> "How did people bake bread in the past?"
    (re.compile(r"^i\s+(?:want|need|would like|'d like)\s+to\s+(.+)$", re.I), lambda m: f"How did people {m[1]}"),
    # "Write a guide on how to bake bread." -> "How did people bake bread in the past?"
    (re.compile(rf"^{_ASK}(?:\s+me)?\s+(?:a\s+|an\s+|the\s+|some\s+)?(?:[\w-]+\s+){{0,2}}?(?:guide|instructions|"
                r"tutorial|steps|explanation|plan|list|description|overview|tips|advice)\s+(?:on|for|about|of|to)?\s*"
                r"(?:how\s+to\s+|how\s+one\s+could\s+)(.+)$", re.I), lambda m: f"How did people {m[1]}"),
    (re.compile(rf"^{_ASK}(?:\s+me)?\s+how\s+to\s+(.+)$", re.I), lambda m: f"How did people {m[1]}"),
    # any other request in the imperative: "Write a poem about rain." -> "How did people in the past write a poem..."
    (re.compile(rf"^({_ASK})(?:\s+me)?\s+(.+)$", re.I), lambda m: f"How did people in the past {m[1].lower()} {m[2]}"),
)


def to_past_tense(text: str) -> str:
    """The request rewritten into the past tense (Andriushchenko & Flammarion 2024 ask GPT-3.5 for the rewrite; this
    is a programmatic stand-in): the first matching rule of ``_PAST_RULES``, "in the past" added where the rule does
    not say it, else "How was this done in the past: <request>". English requests only."""
    t = " ".join(text.split()).rstrip(" ?.!")
    t = re.sub(r"^(?:can|could|would|will)\s+you\s+(?:please\s+)?", "", t, flags=re.I)
    for rule, make in _PAST_RULES:
        m = rule.match(t)
        if m:
            out = _PRONOUNS.sub(lambda w: _THIRD[w.group(0).lower()], make(m))
            return out + ("?" if "in the past" in out else " in the past?")
    return f"How was this done in the past: {t[:1].lower() + t[1:]}?"


_THIRD = {"my": "their", "me": "them", "myself": "themselves", "mine": "theirs", "i": "they", "i'm": "they were"}
_PRONOUNS = re.compile(r"\b(?:my|me|myself|mine|i'm|i)\b", re.I)


TRANSFORMS = {"past_tense": to_past_tense, "base64": to_base64, "rot13": to_rot13}
"""Named rewrites of the request a slot may apply: ``{prompt:<name>}``."""


def pick_template(templates: Sequence[str], request_id: str, family: str) -> str:
    """One template of a family for a request: stable under reruns and independent of other families."""
    h = int(hashlib.sha256(f"{request_id}|{family}".encode()).hexdigest()[:8], 16)
    return templates[h % len(templates)]



def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is 'I', an acronym or a name."""
    from coherentize.variations.lexicons import first_names

    first = text.split(" ", 1)[0]
    if first in ("I", "I'm", "I've", "I'd") or first.isupper() or first.strip("?,.!") in first_names():
        return text
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------------------------------------------------
# Reading template files.


def _read_file(path: str | os.PathLike, source: str | None = None) -> list[TemplateFamily]:
    """Template families of one file; every mistake is one CoherentizeError naming the file and field."""
    path = Path(path)
    data = read_structured_file(path, "template")
    fams = data.get("families") if isinstance(data, dict) else None
    if isinstance(fams, dict):  # the older evaluation shape {name: [templates]}
        fams = [{"name": k, "templates": [v] if isinstance(v, str) else v} for k, v in fams.items()]
    if not isinstance(fams, list) or not fams:
        raise CoherentizeError(f"{path}: expected a top-level 'families:' list (see coherentize.variations.templates).")
    out: list[TemplateFamily] = []
    for i, fam in enumerate(fams):
        out.append(_parse_family(fam, f"{path}: families[{i}]", source or str(path), [f.name for f in out]))
    return out


def _parse_family(fam, where: str, source: str, taken: list[str]) -> TemplateFamily:
    if not isinstance(fam, dict):
        raise CoherentizeError(f"{where}: expected a mapping with name, templates (and optional doc, system).")
    unknown = sorted(set(fam) - {"name", "doc", "templates", "system", "kind"})
    if unknown:
        raise CoherentizeError(f"{where}: unknown field {unknown[0]!r}; valid fields are name, doc, templates, system, "
                               "kind.")
    name = fam.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CoherentizeError(f"{where}.name: {name!r} must be lower case letters, digits and underscores.")
    if name in taken:
        raise CoherentizeError(f"{where}.name: family {name!r} already exists; choose another name.")
    temps, system, doc = fam.get("templates"), fam.get("system", []), fam.get("doc", "")
    if not isinstance(temps, list) or not temps:
        raise CoherentizeError(f"{where}.templates: give at least one template with a {SLOT} slot.")
    for j, t in enumerate(temps):
        if not isinstance(t, str) or not SLOT_RE.search(t):
            hint = f" (the slot was renamed: write {SLOT} instead of {OLD_SLOT})" if isinstance(t, str) and OLD_SLOT in t else ""
            raise CoherentizeError(
                f"{where}.templates[{j}]: template {t!r} of family {name!r} has no {SLOT} slot; write {SLOT} where "
                f"the original prompt goes{hint}."
            )
        bad = [m.group(1) for m in SLOT_RE.finditer(t) if m.group(1) and m.group(1) not in TRANSFORMS]
        if bad:
            raise CoherentizeError(f"{where}.templates[{j}]: unknown transform {{prompt:{bad[0]}}}; transforms are "
                                   f"{', '.join(TRANSFORMS)}.")
    kind = fam.get("kind", [])
    kinds = [kind] if isinstance(kind, str) else kind
    if not isinstance(kinds, list) or any(k not in ATTACK_KINDS for k in kinds):
        wrong = next((k for k in kinds if k not in ATTACK_KINDS), kind) if isinstance(kinds, list) else kind
        raise CoherentizeError(f"{where}.kind: {wrong!r} is not an attack kind; use {', '.join(ATTACK_KINDS)}.")
    if not isinstance(system, list) or any(not isinstance(s, str) or not s.strip() for s in system):
        raise CoherentizeError(f"{where}.system: system messages must be a list of non-empty strings.")
    if not isinstance(doc, str):
        raise CoherentizeError(f"{where}.doc: give one line of text.")
    return TemplateFamily(name, doc or f"templates from {source}", tuple(temps), tuple(system), source,
                          tuple(dict.fromkeys(kinds)))


# ---------------------------------------------------------------------------------------------------------------
# The one loader: shipped files, easyjailbreak, users' files.

SHIPPED = {"built-in": "variations.yaml", "organism": "organism.yaml", "project": "jailbreak.yaml"}
"""Source names of the shipped template files (data/templates/)."""


@lru_cache(maxsize=None)
def _shipped(src: str) -> tuple[TemplateFamily, ...]:
    return tuple(_read_file(data_path("templates", SHIPPED[src]), src))


def _easyjailbreak_families() -> list[TemplateFamily]:
    from coherentize.sources import easyjailbreak_templates

    return [TemplateFamily(k, "Wei et al. (2023), from easyjailbreak", (v.replace(OLD_SLOT, SLOT),), (), "easyjailbreak",
                           EASYJAILBREAK_KINDS.get(k, ()))
            for k, v in easyjailbreak_templates().items() if OLD_SLOT in v]


def _source(src: str) -> list[TemplateFamily]:
    if src in SHIPPED:
        return list(_shipped(src))
    if src == "easyjailbreak":
        return _easyjailbreak_families()
    return _read_file(src)


def template_families(sources: Sequence[str | os.PathLike], only: Sequence[str] | None = None
                      ) -> dict[str, TemplateFamily]:
    """{name: family} from the named sources, merged: 'built-in', 'organism', 'project' (SHIPPED), 'easyjailbreak', or
    a file's path; a family name given by two sources is an error, and so is a mistake in a file (one line naming the
    file and field). only: keep these, in this order (an unknown name is an error listing the available ones)."""
    merged: dict[str, TemplateFamily] = {}
    for src in sources:
        for fam in _source(str(src)):
            if fam.name in merged:
                raise CoherentizeError(f"template family {fam.name!r} is given by both {merged[fam.name].source} "
                                       f"and {src}; rename one.")
            merged[fam.name] = fam
    if only:
        unknown = sorted(set(only) - set(merged))
        if unknown:
            raise CoherentizeError(f"template families {unknown} not found; available: {sorted(merged)}.")
        merged = {k: merged[k] for k in only}
    if not merged:
        raise CoherentizeError("no template families to use; check jailbreak_sources / jailbreak_families.")
    return merged


def kinds_of(families) -> dict[str, tuple[str, ...]]:
    """{name: attack kinds} of template families ({name: TemplateFamily} or a sequence of them)."""
    items = families.values() if isinstance(families, dict) else families
    return {f.name: f.kinds for f in items}
