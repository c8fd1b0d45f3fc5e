"""The augment pipeline: output schema, determinism, filter counts, resuming after a kill or an exception."""

import json

import pytest

from coherentize.clusters import load_clusters
from coherentize.errors import CoherentizeError
from coherentize.variations import augment, families_by_name, ngram_embedder
from coherentize.variations.filter import FilterConfig
from coherentize.variations.pipeline import read_done
from coherentize.variations.prompt_sets import PromptItem, load_prompt_set

ITEMS = [
    PromptItem("a", "Alice and Bob are cooking. What are some cheap, healthy and quick meals?", {"split": "train"}),
    PromptItem("b", "How do I kill a Python process?", {"split": "test"}),
    PromptItem("c", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain tides."}]),
    PromptItem("d", "Why is the sky blue?"),
    PromptItem("e", "Write a haiku about snow and ice."),
]


class Recorder:
    """A paraphraser back end that rewrites by template and records every text it was asked to rewrite;
    fail_after makes it raise after that many calls (an injected crash)."""

    def __init__(self, fail_after=None):
        self.texts, self.calls, self.fail_after = [], 0, fail_after

    def __call__(self, jobs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("injected crash")
        self.calls += 1
        self.texts += [j.text for j in jobs]
        return [f"Sure, here it is:\n{j.text.rstrip('?.')} -- put another way ({j.style.lower().rstrip('.')})" for j in jobs]


FAMS = ["wrapper", "opinion_cue", "persona", "name_swap", "typos"]


def test_writes_clusters_in_the_foundation_schema(tmp_path):
    out = tmp_path / "c.jsonl"
    s = augment(ITEMS, out, families_by_name(FAMS), seed=0, paraphraser=Recorder(), n_paraphrases=2, progress=False)
    assert out.exists() and not (tmp_path / "c.jsonl.partial").exists()
    clusters = load_clusters(out)
    assert [c.id for c in clusters] == ["a", "b", "c", "d", "e"]
    assert clusters[0].tags == {"split": "train"} and clusters[2].anchor == ITEMS[2].prompt
    fams = [set(c.families) for c in clusters]
    assert {"anchor", "wrapper", "opinion_cue", "persona", "typos", "paraphrase", "name_swap"} == fams[0]
    assert "name_swap" not in fams[1]  # no names to swap
    para = [v.prompt for v in clusters[1].variations if v.family == "paraphrase"]
    assert len(para) == 2 and all(p.startswith("How do I kill a Python process -- put another way") for p in para)
    chat_para = [v.prompt for v in clusters[2].variations if v.family == "paraphrase"][0]
    assert chat_para[0] == {"role": "system", "content": "Be brief."} and "Explain tides" in chat_para[1]["content"]
    assert s.written == 5 and s.families["paraphrase"].kept == 10 and s.families["wrapper"].generated == 5


def test_same_seed_byte_identical_different_seed_different(tmp_path):
    outs = []
    for seed, name in [(3, "x"), (3, "y"), (4, "z")]:
        augment(ITEMS, tmp_path / name, families_by_name(["all"]), seed=seed, per_family=2, paraphraser=Recorder(),
                embed=ngram_embedder, progress=False)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_filter_drops_and_counts_by_reason(tmp_path):
    def para(jobs):  # a copy, a drifted rewrite, and a fine one per prompt
        return [[j.text + " ", "Completely unrelated sentence about quantum lattices.", j.text + " Thanks!"][i % 3]
                for i, j in enumerate(jobs)]

    out = tmp_path / "f.jsonl"
    s = augment(ITEMS[:2], out, families_by_name(["typos"]), paraphraser=para, n_paraphrases=3, embed=ngram_embedder,
                filter_cfg=FilterConfig(min_cosine=0.5, max_cosine=0.99), progress=False)
    p = s.families["paraphrase"]
    assert (p.generated, p.kept, p.dropped["copy"], p.dropped["drifted"]) == (4, 2, 0, 2)  # copies equal after clean
    for c in load_clusters(out):
        assert [v.family for v in c.variations].count("paraphrase") == 1
        assert "quantum" not in json.dumps(c.to_json())
    assert s.families["typos"].kept == 2 and len(s.families["typos"].cosines) == 2  # measured, not enforced
    assert p.judged == {"drifted": 2} and len(p.cosines) == 4
    row = next(line for line in s.table().splitlines() if line.startswith("paraphrase*"))
    assert row.split()[1:5] == ["4", "2", "2", "0"]  # made, kept, drifted, copy


def test_exception_midway_keeps_finished_clusters_and_rerun_completes(tmp_path):
    out, partial = tmp_path / "r.jsonl", tmp_path / "r.jsonl.partial"
    crash = Recorder(fail_after=2)
    with pytest.raises(RuntimeError, match="injected"):
        augment(ITEMS, out, families_by_name(FAMS), paraphraser=crash, chunk_size=2, progress=False)
    assert not out.exists()  # nothing that looks complete
    done = [json.loads(line)["id"] for line in partial.read_text().splitlines()]
    assert done == ["a", "b", "c", "d"]
    rerun = Recorder()
    s = augment(ITEMS, out, families_by_name(FAMS), paraphraser=rerun, chunk_size=2, progress=False)
    assert rerun.texts == ["Write a haiku about snow and ice."] * 2  # nothing already written is requested again
    assert s.already_done == 4 and s.written == 1
    assert [c.id for c in load_clusters(out)] == ["a", "b", "c", "d", "e"]
    fresh = tmp_path / "fresh.jsonl"
    augment(ITEMS, fresh, families_by_name(FAMS), paraphraser=Recorder(), chunk_size=2, progress=False)
    assert out.read_bytes() == fresh.read_bytes()


def test_a_line_cut_short_by_a_kill_is_redone(tmp_path):
    out, partial = tmp_path / "k.jsonl", tmp_path / "k.jsonl.partial"
    augment(ITEMS[:2], tmp_path / "two.jsonl", families_by_name(FAMS), progress=False)
    partial.write_bytes((tmp_path / "two.jsonl").read_bytes() + b'{"id": "c", "anchor": [{"ro')
    assert [c.id for c in read_done(partial)] == ["a", "b"]
    assert partial.read_bytes().endswith(b"\n")
    augment(ITEMS, out, families_by_name(FAMS), progress=False)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == ["a", "b", "c", "d", "e"]


def test_complete_output_is_not_redone(tmp_path):
    out = tmp_path / "done.jsonl"
    augment(ITEMS, out, families_by_name(FAMS), progress=False)
    before = out.read_bytes()
    rec = Recorder()
    s = augment(ITEMS, out, families_by_name(FAMS), paraphraser=rec, progress=False)
    assert s.already_done == 5 and s.written == 0 and rec.texts == [] and out.read_bytes() == before


def test_cluster_with_every_variation_filtered_is_left_out_and_counted(tmp_path):
    out = tmp_path / "e.jsonl"
    s = augment(ITEMS[:3], out, [], paraphraser=lambda jobs: ["Unrelated: quantum lattice gauge theory."] * len(jobs),
                embed=ngram_embedder, progress=False)
    assert s.empty == 3 and s.written == 3
    assert out.read_text() == "" and not (tmp_path / "e.jsonl.partial").exists()


def test_shipped_benign_set_through_every_family(tmp_path):
    items = load_prompt_set("benign", split="train")
    s = augment(items, tmp_path / "b.jsonl", families_by_name(["all"]), embed=ngram_embedder, progress=False)
    clusters = load_clusters(tmp_path / "b.jsonl")
    assert len(clusters) == 30
    assert all(len(c.variations) >= 8 for c in clusters)
    assert {"name_swap", "reorder", "synonym"} <= set(s.families) and s.families["name_swap"].generated >= 3


def test_resuming_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    with pytest.raises(RuntimeError):
        augment(ITEMS, out, families_by_name(FAMS), seed=1, paraphraser=Recorder(fail_after=1), chunk_size=2,
                progress=False)
    with pytest.raises(CoherentizeError, match=r"other settings \(seed: 1 then, 2 now\)"):
        augment(ITEMS, out, families_by_name(FAMS), seed=2, paraphraser=Recorder(), chunk_size=2, progress=False)
    augment(ITEMS, out, families_by_name(FAMS), seed=1, paraphraser=Recorder(), chunk_size=2, progress=False)
    assert len(load_clusters(out)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


@pytest.mark.slow
def test_minilm_summary_shows_the_drifting_family_on_the_benign_set(tmp_path):
    """The measurement behind the lead's note: typos drift (some variants below min_cosine), wrappers do not."""
    from coherentize.variations import load_embedder

    s = augment(load_prompt_set("benign"), tmp_path / "b.jsonl", families_by_name(["typos", "wrapper", "roleplay"]),
                embed=load_embedder(), progress=False)
    typos, wrapper = s.families["typos"], s.families["wrapper"]
    mean = lambda f: sum(f.cosines) / len(f.cosines)  # noqa: E731
    assert len(typos.cosines) == 50 and mean(typos) < mean(wrapper) - 0.1
    assert typos.judged["drifted"] > 0 == wrapper.judged["drifted"]
    assert typos.kept == 50  # measured, not dropped: the filter is enforced on paraphrases only by default
