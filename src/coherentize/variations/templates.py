"""User-defined template families, from a YAML or JSON file, no Python needed.

Example file (``my_families.yaml``)::

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
Use the file with ``coherentize augment --templates my_families.yaml --families exam_frame,wrapper ...``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from coherentize.config import from_dict, read_config_file
from coherentize.errors import CoherentizeError
from coherentize.variations.families import BUILTIN_FAMILIES, SLOT, Family, TemplateFamily

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class TemplateSpec:
    """One family of a template file."""

    name: str
    """Family name (lower case letters, digits, underscores); tags every variation it makes."""
    templates: list[str]
    """Texts with a {prompt} slot; one is drawn per variation."""
    doc: str = ""
    """One line saying what the family varies."""
    system: list[str] = field(default_factory=list)
    """Optional system messages; when given, variations are chat messages with one of them first."""


@dataclass
class TemplateFile:
    families: list[TemplateSpec]
    """The families defined by the file."""


def load_template_families(path: str | os.PathLike) -> list[Family]:
    """Read a template file into families; every mistake is one CoherentizeError naming the file and field."""
    data = read_config_file(path)
    if "families" not in data:
        raise CoherentizeError(f"{path}: expected a top-level 'families:' list (see coherentize.variations.templates).")
    spec = from_dict(TemplateFile, data, where=str(path))
    out: list[Family] = []
    for i, fam in enumerate(spec.families):
        where = f"{path}: families[{i}]"
        if not _NAME.match(fam.name):
            raise CoherentizeError(f"{where}.name: {fam.name!r} must be lower case letters, digits and underscores.")
        if fam.name in BUILTIN_FAMILIES or fam.name == "paraphrase" or fam.name in [f.name for f in out]:
            raise CoherentizeError(f"{where}.name: family {fam.name!r} already exists; choose another name.")
        if not fam.templates:
            raise CoherentizeError(f"{where}.templates: give at least one template with a {SLOT} slot.")
        for j, t in enumerate(fam.templates):
            if SLOT not in t:
                raise CoherentizeError(
                    f"{where}.templates[{j}]: template {t!r} has no {SLOT} slot; write {SLOT} where the original "
                    "prompt goes."
                )
        if any(not s.strip() for s in fam.system):
            raise CoherentizeError(f"{where}.system: system messages must be non-empty.")
        t = TemplateFamily(fam.name, fam.doc or f"templates from {path}", tuple(fam.templates), tuple(fam.system))
        out.append(Family(t.name, t.doc, t.make))
    return out
