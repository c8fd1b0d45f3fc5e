"""`coherentize augment` end to end through the CLI entry point: output, summary, and the user mistakes that must be
one clear error (exit 2, no traceback, no file that looks complete)."""

import json
import socket

import pytest

from coherentize.cli import main
from coherentize.clusters import load_clusters


def _prompts(tmp_path, lines):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return p


GOOD = [{"id": "a", "prompt": "Alice and Bob want cheap, healthy and quick meals. Ideas?"},
        {"id": "b", "prompt": "How do I kill a Python process?", "tags": {"split": "test"}}]


def test_augment_writes_clusters_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    rc = main(["augment", "--input", str(_prompts(tmp_path, GOOD)), "--out", str(out), "--families",
               "wrapper,opinion_cue,roleplay,typos", "--per-family", "2", "--embedder", "ngram", "--no-progress"])
    assert rc == 0
    clusters = load_clusters(out)
    assert [c.id for c in clusters] == ["a", "b"] and clusters[1].tags == {"split": "test"}
    assert [v.family for v in clusters[0].variations] == ["wrapper"] * 2 + ["opinion_cue"] * 2 + ["roleplay"] * 2 + ["typos"] * 2
    table = capsys.readouterr().out
    assert "clusters written: 2" in table
    row = next(line for line in table.splitlines() if line.startswith("opinion_cue"))
    assert row.split()[1:3] == ["4", "4"]  # made 4, kept 4


def test_same_seed_same_bytes_through_the_cli(tmp_path):
    inp = _prompts(tmp_path, GOOD)
    files = []
    for seed, name in [("5", "x.jsonl"), ("5", "y.jsonl"), ("6", "z.jsonl")]:
        assert main(["augment", "--input", str(inp), "--out", str(tmp_path / name), "--seed", seed,
                     "--embedder", "none", "--no-progress"]) == 0
        files.append((tmp_path / name).read_bytes())
    assert files[0] == files[1] != files[2]


def test_shipped_set_by_name_and_split(tmp_path, capsys):
    out = tmp_path / "edgy.jsonl"
    assert main(["augment", "--input", "edgy_benign", "--split", "test", "--out", str(out), "--families", "wrapper",
                 "--embedder", "none", "--no-progress"]) == 0
    clusters = load_clusters(out)
    assert len(clusters) == 8 and all(c.split == "test" for c in clusters)


def _fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_line_without_prompt(tmp_path, capsys):
    inp = _prompts(tmp_path, [GOOD[0], {"id": "x", "tags": {}}])
    out = tmp_path / "c.jsonl"
    _fails(["augment", "--input", str(inp), "--out", str(out), "--embedder", "none"], capsys,
           f"{inp}:2: missing 'prompt'")
    assert not out.exists() and not (tmp_path / "c.jsonl.partial").exists()


def test_unknown_family_lists_the_valid_ones(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    _fails(["augment", "--input", str(_prompts(tmp_path, GOOD)), "--out", str(out), "--families", "wrapper,pirate"],
           capsys, "unknown family 'pirate'", "valid: name_swap, reorder", "opinion_cue", "roleplay")
    assert not out.exists()


def test_template_without_slot(tmp_path, capsys):
    t = tmp_path / "t.yaml"
    t.write_text("families:\n  - name: exam\n    templates: ['Exam question:']\n")
    _fails(["augment", "--input", str(_prompts(tmp_path, GOOD)), "--out", str(tmp_path / "c.jsonl"),
            "--templates", str(t), "--families", "exam"], capsys, f"{t}: families[0].templates[0]", "{prompt} slot")


def test_template_family_through_the_cli(tmp_path):
    t = tmp_path / "t.yaml"
    t.write_text("families:\n  - name: exam\n    templates: ['Exam question: {prompt}']\n")
    out = tmp_path / "c.jsonl"
    assert main(["augment", "--input", str(_prompts(tmp_path, GOOD)), "--out", str(out), "--templates", str(t),
                 "--families", "exam", "--embedder", "none", "--no-progress"]) == 0
    assert load_clusters(out)[1].variations[0].prompt == "Exam question: How do I kill a Python process?"


def test_unreachable_server(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "c.jsonl"
    _fails(["augment", "--input", str(_prompts(tmp_path, GOOD)), "--out", str(out), "--families", "none",
            "--paraphraser", "server", "--server-url", f"http://127.0.0.1:{port}/v1", "--retries", "1",
            "--embedder", "none", "--no-progress"], capsys, "could not reach the paraphrase server", "after 2 tries")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]  # nothing half-written left behind


@pytest.mark.parametrize("argv, needle", [
    (["--families", "paraphrase"], "choose a paraphraser with --paraphraser"),
    (["--families", "none"], "nothing to do"),
    (["--min-cosine", "0.9", "--max-cosine", "0.5"], "--min-cosine/--max-cosine"),
    (["--server-url", "localhost:1", "--paraphraser", "server"], "must start with http"),
])
def test_other_mistakes(tmp_path, capsys, argv, needle):
    _fails(["augment", "--input", str(_prompts(tmp_path, GOOD)), "--out", str(tmp_path / "c.jsonl"),
            "--embedder", "none"] + argv, capsys, needle)


def test_missing_input_file(tmp_path, capsys):
    _fails(["augment", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c.jsonl")], capsys,
           "file not found")
