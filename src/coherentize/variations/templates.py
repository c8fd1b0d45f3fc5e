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

Every template must contain the ``{prompt}`` slot (where the original text goes); other braces are left as written.
The older evaluation shape ``families: {name: [template, ...]}`` is still read (same slot).

Sources of jailbreak families (``template_families``): ``project`` (data/templates/jailbreak.yaml), ``easyjailbreak``
(Wei et al.'s templates read from the installed package at run time, GPL text: never copied; its ``{query}`` slot is
read as ``{prompt}``), or the path of a file in the format above.

    coherentize augment --templates my_families.yaml --families exam_frame,wrapper ...
"""

from __future__ import annotations

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


def project_templates_path() -> Path:
    """The project's jailbreak families (written for coherentize)."""
    return data_path("templates", "jailbreak.yaml")


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

    def make(self, text: str, rng: random.Random) -> Prompt:
        """A variation of text: a random template (and system message) from rng."""
        template = rng.choice(self.templates)
        # "Hypothetically speaking, {prompt}": the prompt continues a sentence, so it loses its capital.
        user = fill(template, lower_first(text) if ", " + SLOT in template else text)
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
        return [t for t in self.templates if t.strip() != SLOT] + list(self.system)


def fill(template: str, text: str) -> str:
    """Put text into the template's slot (plain replacement: templates may contain other braces)."""
    if SLOT not in template:
        raise CoherentizeError(f"template has no {SLOT} slot: {template[:60]!r}")
    return template.replace(SLOT, text)


wrap = fill  # the name evaluation code uses


def pick_template(templates: TemplateFamily | Sequence[str], request_id: str, family: str) -> str:
    """One template of a family for a request: stable under reruns and independent of other families."""
    temps = templates.templates if isinstance(templates, TemplateFamily) else templates
    h = int(hashlib.sha256(f"{request_id}|{family}".encode()).hexdigest()[:8], 16)
    return temps[h % len(temps)]




def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word is 'I', an acronym or a name."""
    from coherentize.variations.lexicons import first_names

    first = text.split(" ", 1)[0]
    if first in ("I", "I'm", "I've", "I'd") or first.isupper() or first.strip("?,.!") in first_names():
        return text
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------------------------------------------------
# Reading template files.


def read_template_file(path: str | os.PathLike, source: str | None = None) -> list[TemplateFamily]:
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
    unknown = sorted(set(fam) - {"name", "doc", "templates", "system"})
    if unknown:
        raise CoherentizeError(f"{where}: unknown field {unknown[0]!r}; valid fields are name, doc, templates, system.")
    name = fam.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CoherentizeError(f"{where}.name: {name!r} must be lower case letters, digits and underscores.")
    if name in taken:
        raise CoherentizeError(f"{where}.name: family {name!r} already exists; choose another name.")
    temps, system, doc = fam.get("templates"), fam.get("system", []), fam.get("doc", "")
    if not isinstance(temps, list) or not temps:
        raise CoherentizeError(f"{where}.templates: give at least one template with a {SLOT} slot.")
    for j, t in enumerate(temps):
        if not isinstance(t, str) or SLOT not in t:
            hint = f" (the slot was renamed: write {SLOT} instead of {OLD_SLOT})" if isinstance(t, str) and OLD_SLOT in t else ""
            raise CoherentizeError(
                f"{where}.templates[{j}]: template {t!r} of family {name!r} has no {SLOT} slot; write {SLOT} where "
                f"the original prompt goes{hint}."
            )
    if not isinstance(system, list) or any(not isinstance(s, str) or not s.strip() for s in system):
        raise CoherentizeError(f"{where}.system: system messages must be a list of non-empty strings.")
    if not isinstance(doc, str):
        raise CoherentizeError(f"{where}.doc: give one line of text.")
    return TemplateFamily(name, doc or f"templates from {source}", tuple(temps), tuple(system), source)


# ---------------------------------------------------------------------------------------------------------------
# Jailbreak families: project, easyjailbreak, user files.


@lru_cache(maxsize=None)
def _project_families() -> tuple[TemplateFamily, ...]:
    return tuple(read_template_file(project_templates_path(), "project"))


def _easyjailbreak_families() -> list[TemplateFamily]:
    from coherentize.sources import easyjailbreak_templates

    return [TemplateFamily(k, "Wei et al. (2023), from easyjailbreak", (v.replace(OLD_SLOT, SLOT),), (), "easyjailbreak")
            for k, v in easyjailbreak_templates().items() if OLD_SLOT in v]


def source_families(src: str) -> list[TemplateFamily]:
    """The families of one source: 'project', 'easyjailbreak' or a file path."""
    if src == "project":
        return list(_project_families())
    if src == "easyjailbreak":
        return _easyjailbreak_families()
    return read_template_file(src)


def template_families(sources: Sequence[str], only: Sequence[str] | None = None) -> dict[str, TemplateFamily]:
    """{name: family} from the named sources, merged; a family name given by two sources is an error. only: keep
    these, in this order (an unknown name is an error listing the available ones)."""
    merged: dict[str, TemplateFamily] = {}
    for src in sources:
        for fam in source_families(src):
            if fam.name in merged:
                raise CoherentizeError(f"jailbreak family {fam.name!r} is given by both {merged[fam.name].source} "
                                       f"and {src}; rename one.")
            merged[fam.name] = fam
    if only:
        unknown = sorted(set(only) - set(merged))
        if unknown:
            raise CoherentizeError(f"jailbreak families {unknown} not found; available: {sorted(merged)}.")
        merged = {k: merged[k] for k in only}
    if not merged:
        raise CoherentizeError("no jailbreak families to evaluate; check jailbreak_sources / jailbreak_families.")
    return merged


def load_template_file(path: str | os.PathLike) -> dict[str, TemplateFamily]:
    """{name: family} of one file."""
    return {f.name: f for f in read_template_file(path)}
