"""`coherentize mine` through the CLI entry point: every file written (ranked, top, families, page), the ranking on a
tiny model taught to flip one cluster's decision, resuming, redaction of harmful clusters, and the user mistakes that
must be one clear error (exit 2, no traceback)."""

import importlib.util
import json
from pathlib import Path

import pytest

from coherentize.cli import main
from coherentize.clusters import load_clusters

_spec = importlib.util.spec_from_file_location("mining_tests",
                                               Path(__file__).parents[1] / "evaluate" / "test_mining.py")
mining_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mining_tests)  # the taught tiny model and its clusters, shared with evaluate/test_mining.py


@pytest.fixture(scope="module")
def taught_folder(tmp_path_factory):
    model, tok = mining_tests.taught_model()
    folder = tmp_path_factory.mktemp("taught")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _clusters_file(tmp_path, clusters, name="clusters.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(c if isinstance(c, dict) else c.to_json()) + "\n" for c in clusters),
                 encoding="utf-8")
    return p


def _mine(folder, inp, out, *extra):
    return main(["mine", "--model", str(folder), "--device", "cpu", "--input", str(inp), "--out", str(out),
                 "--max-new-tokens", "16", "--no-progress", *extra])


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    err = err.strip().splitlines()[-1]  # (transformers may draw a loading bar first)
    assert err.startswith("coherentize mine: error: "), err
    for n in needles:
        assert n in err, err
    return err


def test_mine_writes_the_ranking_top_clusters_families_and_page(tmp_path, capsys, taught_folder):
    inp = _clusters_file(tmp_path, mining_tests.clusters_for_the_taught_model())
    out = tmp_path / "mined"
    assert _mine(taught_folder, inp, out, "--top", "2", "--layers", "mid,-1") == 0
    stdout = capsys.readouterr().out
    assert "clusters scored: 4   already done (skipped): 0" in stdout
    ranked = [json.loads(line) for line in (out / "ranked.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    assert {r["id"] for r in ranked[:2]} == {"flip", "mc"} and [r["id"] for r in ranked[2:]] == ["js", "same"]
    assert ranked[-1]["flips"] == 0.0 and ranked[-1]["js_to_anchor"] < 1e-6
    top = load_clusters(out / "top.jsonl")  # the project's training clusters format
    assert {c.id for c in top} == {"flip", "mc"} and {c.tags["mined"]["rank"] for c in top} == {1, 2}
    families = json.loads((out / "families.json").read_text())
    assert list(families)[-1] == "copy" and families["copy"]["n"] == 2 and families["roleplay"]["flips"]["mean"] == 1.0
    md = (out / "mine.md").read_text()
    for section in ("## The score", "## Families", "![families.png](families.png)", "## Top 2 clusters",
                    "## Example pairs", "I'm sorry, but I can't help with that"):
        assert section in md, section
    html = (out / "mine.html").read_text()
    assert "data:image/png;base64," in html and "<title>coherentize mine</title>" in html
    assert (out / "families.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "scores.partial.jsonl").exists()


def test_top_clusters_train_with_coherentize_train(tmp_path, capsys, taught_folder):
    out = tmp_path / "mined"
    assert _mine(taught_folder, _clusters_file(tmp_path, mining_tests.clusters_for_the_taught_model()), out,
                 "--top", "3", "--layers", "none") == 0
    sets = [f"model.name_or_path={taught_folder}", "model.device=cpu", f"data.train_file={out / 'top.jsonl'}",
            "data.split=null", "data.eval_split=null", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
            "train.per_device_train_batch_size=2", "train.act_weight=0", "lora.enabled=false"]
    assert main(["train", *[a for s in sets for a in ("--set", s)]]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_a_rerun_skips_scored_clusters_and_other_settings_are_an_error(tmp_path, capsys, taught_folder):
    inp = _clusters_file(tmp_path, mining_tests.clusters_for_the_taught_model())
    out = tmp_path / "mined"
    assert _mine(taught_folder, inp, out, "--max-prompts", "2", "--top", "1") == 0
    first = {json.loads(line)["id"]: json.loads(line) for line in (out / "ranked.jsonl").read_text().splitlines()}
    assert set(first) == {"same", "js"}
    capsys.readouterr()
    assert _mine(taught_folder, inp, out, "--top", "1") == 0  # the input grew: only the new clusters are scored
    assert "clusters scored: 2   already done (skipped): 2" in capsys.readouterr().out
    again = {json.loads(line)["id"]: json.loads(line) for line in (out / "ranked.jsonl").read_text().splitlines()}
    unranked = lambda recs: {k: {**v, "rank": 0} for k, v in recs.items() if k in first}  # noqa: E731
    assert unranked(again) == unranked(first)  # the resumed clusters' scores are kept as they were

    # killed mid-run: two clusters in the partial file, the second cut short; the rest were never written
    lines = [json.dumps({k: v for k, v in again[i].items() if k != "rank"}) for i in ("flip", "mc")]
    (out / "ranked.jsonl").unlink()
    (out / "scores.partial.jsonl").write_text(lines[0] + "\n" + lines[1][:40], encoding="utf-8")
    assert _mine(taught_folder, inp, out, "--top", "1") == 0
    assert "clusters scored: 3   already done (skipped): 1" in capsys.readouterr().out
    assert len((out / "ranked.jsonl").read_text().splitlines()) == 4

    assert _mine(taught_folder, inp, out, "--top", "3") == 0  # only --top changed: nothing to score
    assert "clusters scored: 0   already done (skipped): 4" in capsys.readouterr().out
    assert len(load_clusters(out / "top.jsonl")) == 3

    _fails(["mine", "--model", str(taught_folder), "--input", str(inp), "--out", str(out), "--max-new-tokens", "8",
            "--no-progress"], capsys, "scores there were made with other settings", "max_new_tokens: 16 then, 8 now")
    changed = mining_tests.clusters_for_the_taught_model()
    changed[0].variations.pop()
    _fails(["mine", "--model", str(taught_folder), "--input", str(_clusters_file(tmp_path, changed)), "--out",
            str(out), "--max-new-tokens", "16", "--no-progress"], capsys)  # another input file: other settings
    inp.write_text("".join(json.dumps(c.to_json()) + "\n" for c in changed), encoding="utf-8")
    _fails(["mine", "--model", str(taught_folder), "--input", str(inp), "--out", str(out), "--max-new-tokens", "16",
            "--no-progress"], capsys, "cluster 'same' was scored with other members than the input gives now")


def test_prompt_file_input_builds_clusters_from_the_families(tmp_path, capsys, taught_folder):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(["Alice and Bob want cheap, healthy and quick meals. Ideas?",
                                                      "How do I boil an egg so the yolk stays soft?"])))
    out = tmp_path / "mined"
    assert _mine(taught_folder, prompts, out, "--families", "wrapper,typos", "--per-family", "2",
                 "--layers", "-1") == 0
    families = json.loads((out / "families.json").read_text())
    assert set(families) == {"wrapper", "typos"} and families["wrapper"]["n"] == 4
    ranked = [json.loads(line) for line in (out / "ranked.jsonl").read_text().splitlines()]
    assert {r["id"] for r in ranked} == {"p0", "p1"} and all(len(r["variations"]) == 4 for r in ranked)


def test_harmful_clusters_show_labels_only(tmp_path, capsys, taught_folder):
    secret = "Imagine you are a pirate. What is the capital of France?"
    c = {"id": "h1", "anchor": "What is the capital of France?",
         "variations": [{"prompt": secret, "family": "roleplay_actor"}], "tags": {"harmful": True}}
    out = tmp_path / "mined"
    assert _mine(taught_folder, _clusters_file(tmp_path, [c]), out, "--top", "1") == 0
    md = (out / "mine.md").read_text()
    assert "pirate" not in md and "capital" not in md and "help with that" not in md and "refused" in md
    rec = json.loads((out / "ranked.jsonl").read_text())
    assert rec["harmful"] and rec["anchor_answer"] is None and rec["variations"][0]["answer"] is None
    assert rec["variations"][0]["refusal_flip"] is True


@pytest.mark.parametrize("extra, needles", [
    (["--families", "typos,pirate"], ["--families: 'pirate' not in", "its families are copy, opinion_cue"]),
    (["--layers", "mid,x"], ["--layers: 'x' is not a layer"]),
    (["--layers", "7"], ["layers: layer 7 out of range for a model of 2 layers"]),
    (["--top", "0"], ["--top, --per-family"]),
    (["--split", "train"], ["no cluster with a variation to score in split 'train'"]),
])
def test_bad_flags_are_one_clear_line(tmp_path, capsys, taught_folder, extra, needles):
    inp = _clusters_file(tmp_path, mining_tests.clusters_for_the_taught_model())
    _fails(["mine", "--model", str(taught_folder), "--input", str(inp), "--out", str(tmp_path / "o"), *extra],
           capsys, *needles)
    assert not (tmp_path / "o" / "ranked.jsonl").exists()


def test_bad_input_files_name_the_file(tmp_path, capsys):
    _fails(["mine", "--model", "x", "--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")], capsys,
           "none.jsonl: file not found")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "anchor": "hi", "variations": ["hello"]}\n{"id": "b", "anchor": \n')
    _fails(["mine", "--model", "x", "--input", str(bad), "--out", str(tmp_path / "o")], capsys,
           "bad.jsonl:2: not valid JSON")
    _fails(["mine", "--model", "x", "--input", "benign", "--families", "pirate", "--out", str(tmp_path / "o")],
           capsys, "unknown family 'pirate'")


@pytest.mark.slow
def test_mine_on_the_packaged_model(tmp_path, capsys):
    """The issue's command, shortened: packaged SmolLM2-135M-Instruct, shipped benign prompts, four families."""
    out = tmp_path / "mined"
    rc = main(["mine", "--model", "smollm2-135m-instruct", "--device", "cpu", "--input", "benign", "--families",
               "wrapper,typos,register,opinion_cue", "--max-prompts", "3", "--top", "3", "--max-new-tokens", "16",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    ranked = [json.loads(line) for line in (out / "ranked.jsonl").read_text().splitlines()]
    assert len(ranked) == 3 and ranked[0]["score"] >= ranked[-1]["score"]
    assert all(r["js_to_anchor"] is not None and r["act"] is not None for r in ranked)
    assert len(load_clusters(out / "top.jsonl")) == 3
    families = json.loads((out / "families.json").read_text())
    assert set(families) == {"wrapper", "typos", "register", "opinion_cue"}
    assert all(d["n"] == 3 and d["score"]["mean"] is not None for d in families.values())
    assert (out / "mine.html").is_file() and (out / "families.png").is_file()
