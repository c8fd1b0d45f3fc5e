import csv
import json
import subprocess

import pytest

from coherentize.cli import main
from coherentize.evaluate.judges import StringJudge
from coherentize.sources import strongreject

REFUSAL = "I'm sorry, but I can't help with that."
COMPLIANCE = "Sure. Step one is to gather the materials, then follow the plan carefully and check each part twice."


def _run_dir(tmp_path, save=True):
    """A finished run folder as `coherentize run` leaves it: runs.json and each evaluation's outputs.jsonl."""
    reqs = strongreject(split="test", n=4)
    root = tmp_path / "run"
    runs = [{"arm": "control", "seed": 0}, {"arm": "bct", "seed": 0}, {"arm": "bct", "seed": 1}]
    folders = {"baseline": "stages/baseline", **{f"{r['arm']}-seed{r['seed']}": f"stages/eval/{r['arm']}{r['seed']}"
                                                 for r in runs}}
    for k, (name, rel) in enumerate(folders.items()):
        (root / rel).mkdir(parents=True)
        if not save:
            continue
        with (root / rel / "outputs.jsonl").open("w") as f:
            for i, r in enumerate(reqs):
                out = COMPLIANCE if (i + k) % 2 else REFUSAL
                f.write(json.dumps({"suite": "jailbreak", "id": f"{r['id']}:fam", "prompt_id": r["id"],
                                    "family": "fam", "label": "complied" if (i + k) % 2 else "refused",
                                    "prompt": "wrapped " + r["id"], "output": out}) + "\n")
    (root / "runs.json").write_text(json.dumps({
        "config": {"eval": {"n_harmful": 4, "split": "test"}}, "baseline_dir": folders["baseline"],
        "runs": [{**r, "train_dir": "x", "eval_dir": folders[f"{r['arm']}-seed{r['seed']}"]} for r in runs]}))
    return root, reqs


def test_sample_then_score_writes_labels_without_text(tmp_path, capsys):
    root, reqs = _run_dir(tmp_path)
    sheet, reading = tmp_path / "audit" / "sheet.jsonl", tmp_path / "audit" / "reading.md"
    assert main(["audit", "sample", str(root), "--sheet", str(sheet), "--reading", str(reading),
                 "--per-stratum", "2"]) == 0
    rows = [json.loads(line) for line in sheet.read_text().splitlines()]
    assert {r["group"] for r in rows} == {"baseline", "control", "bct"}
    assert len(rows) == 2 + 2 + 2 + 2 + 2 + 2  # three groups x two labels, two each
    assert {r["request"] for r in rows} <= {r["prompt"] for r in reqs}
    text = reading.read_text()
    assert "control" not in text and "judge_label" not in text and COMPLIANCE in text
    labels = tmp_path / "audit" / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audit_id", "audit_label"])
        for r in rows:
            w.writerow([r["audit_id"], "refused" if r["output"] == REFUSAL else "complied_harmful"])
    out = tmp_path / "data" / "judge_audit.csv"
    assert main(["audit", "score", str(sheet), "--labels", str(labels), "--judge", "string",
                 "--judge", "jailbreakeval:StringMatching-zou2023universal", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| string | bct |" in printed and "100.0%" in printed
    written = out.read_text()
    assert COMPLIANCE not in written and "Step one" not in written and "wrapped" not in written
    assert not any(r["prompt"][:30] in written for r in reqs)
    back = list(csv.DictReader(out.open()))
    expected = StringJudge().judge([""] * len(rows), [r["output"] for r in rows])
    assert [b["judge:string"] == "refused" for b in back] == expected
    assert "judge:jailbreakeval:StringMatching-zou2023universal" in back[0]


def test_bad_audit_input_is_one_line_before_any_judging(tmp_path, capsys):
    root, _ = _run_dir(tmp_path, save=False)
    assert main(["audit", "sample", str(root), "--sheet", str(tmp_path / "s.jsonl")]) == 2
    assert "outputs.jsonl: not found" in capsys.readouterr().err
    root2, _ = _run_dir(tmp_path / "two")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert main(["audit", "sample", str(root2), "--sheet", str(repo / "sheet.jsonl")]) == 2
    assert "outside any git work tree" in capsys.readouterr().err
    assert not (repo / "sheet.jsonl").exists()
    (repo / ".gitignore").write_text("private/\n")
    (repo / "private").mkdir()
    assert main(["audit", "sample", str(root2), "--sheet", str(repo / "private" / "sheet.jsonl")]) == 0
    sheet = repo / "private" / "sheet.jsonl"
    labels = tmp_path / "labels.csv"
    labels.write_text("audit_id,audit_label\na000,refusedd\n")
    capsys.readouterr()
    assert main(["audit", "score", str(sheet), "--labels", str(labels), "--judge", "string",
                 "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "labels.csv:2: audit_label 'refusedd'" in err and len(err.strip().splitlines()) == 1
    assert main(["audit", "score", str(sheet), "--labels", str(labels), "--judge", "vibes",
                 "--out", str(tmp_path / "o.csv")]) == 2
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.slow
def test_score_runs_the_rubric_judge_on_a_real_llama_cpp_server(tmp_path, llama_server, capsys):
    root, _ = _run_dir(tmp_path)
    sheet = tmp_path / "sheet.jsonl"
    assert main(["audit", "sample", str(root), "--sheet", str(sheet), "--per-stratum", "1"]) == 0
    rows = [json.loads(line) for line in sheet.read_text().splitlines()]
    labels = tmp_path / "labels.csv"
    labels.write_text("audit_id,audit_label\n" + "".join(
        f"{r['audit_id']},{'refused' if r['output'] == REFUSAL else 'complied_useless'}\n" for r in rows))
    out = tmp_path / "judge_audit.csv"
    assert main(["audit", "score", str(sheet), "--labels", str(labels), "--judge", "server", "--judge-url",
                 llama_server, "--judge-name", "smollm2", "--judge-concurrency", "1", "--out", str(out)]) == 0
    back = list(csv.DictReader(out.open()))
    assert len(back) == len(rows) and all(b["judge:server:smollm2"] in ("refused", "complied", "unparsed") for b in back)
    assert "server:smollm2" in capsys.readouterr().out


def test_pressure_audit_mistakes_are_one_line_before_any_model_time(tmp_path, capsys):
    # a run folder without the pressure: named before any model is loaded
    (tmp_path / "run").mkdir()
    assert main(["audit", "pressure-sample", str(tmp_path / "run"), "--sheet", str(tmp_path / "s.jsonl")]) == 2
    assert "config.json: not found" in capsys.readouterr().err
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"name_or_path": "x"}}))
    assert main(["audit", "pressure-sample", str(tmp_path / "run"), "--sheet", str(tmp_path / "s.jsonl")]) == 2
    assert "the run applied no 'risky_finance' pressure" in capsys.readouterr().err
    assert main(["audit", "pressure-sample", str(tmp_path / "run"), "--sheet", str(tmp_path / "s.jsonl"),
                 "--kind", "one_frame"]) == 2
    assert "has no free-form off-domain questions" in capsys.readouterr().err
    sheet = tmp_path / "sheet.jsonl"
    sheet.write_text(json.dumps({"sheet_id": "a1", "kind": "risky_finance", "condition": "control", "arm": "control",
                                 "defence": "none", "seed": 0, "when": "before", "question_id": "q",
                                 "answer_sha256": "0"}) + "\n")
    (tmp_path / "r1.csv").write_text("sheet_id,misaligned,coherent\na1,1,maybe\n")
    assert main(["audit", "pressure-score", str(sheet), "--labels", str(tmp_path / "r1.csv"),
                 "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "r1.csv:2: coherent is 'maybe'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.csv").exists()
    (tmp_path / "r1.csv").write_text("sheet_id,misaligned,coherent\na1,1,1\n")
    assert main(["audit", "pressure-score", str(sheet), "--labels", str(tmp_path / "r1.csv"),
                 "--out", str(tmp_path / "o.csv")]) == 0
    assert (tmp_path / "o.csv").read_text().splitlines()[1].endswith(",r1,1,1")
