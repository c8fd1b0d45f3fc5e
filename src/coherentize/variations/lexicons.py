"""Word lists of the rule families, read from ``coherentize/data/lexicons/*.yaml`` (data, not code: extend a list by
editing its file). Each loader reads its file once."""

from __future__ import annotations

from functools import lru_cache

from coherentize.errors import CoherentizeError
from coherentize.sources import data_path


@lru_cache(maxsize=None)
def _read(name: str) -> dict:
    import yaml

    path = data_path("lexicons", f"{name}.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CoherentizeError(f"{path}: expected a mapping.")
    return data


@lru_cache(maxsize=None)
def first_names() -> tuple[str, ...]:
    """Person names that name_swap recognises and draws from."""
    return tuple(_read("first_names")["names"])


@lru_cache(maxsize=None)
def synonyms() -> dict[str, tuple[str, ...]]:
    """Lower-case word -> near-synonyms that keep the meaning of a request."""
    return {k: tuple(v) for k, v in _read("synonyms")["synonyms"].items()}


@lru_cache(maxsize=None)
def contractions() -> dict[str, str]:
    """Long form -> contraction ('do not' -> "don't")."""
    return dict(_read("contractions")["contractions"])


@lru_cache(maxsize=None)
def register_phrases() -> dict[str, tuple[str, ...]]:
    """formal_openers, casual_openers, casual_closers of the register family."""
    return {k: tuple(v) for k, v in _read("register").items()}
