"""docs/results.md sections recomputed from committed per-item data (report/data.py, report/section.py,
`coherentize report`)."""

import json
import shutil
from pathlib import Path

import pytest

from coherentize.cli import main
from coherentize.errors import CoherentizeError
from coherentize.report import data, section

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "results.md"
DATA = ROOT / "docs" / "results" / "data"
# Every data folder committed under docs/results/data/ has its section in docs/results.md.
COMMITTED = sorted(p.name for p in DATA.iterdir() if (p / "manifest.json").is_file()) if DATA.is_dir() else []


def test_at_least_one_section_is_backed_by_committed_data():
    assert COMMITTED, f"no data folder under {DATA}"


@pytest.mark.parametrize("name", COMMITTED)
def test_a_committed_section_is_exactly_what_its_data_recompute(name):
    text = PAGE.read_text(encoding="utf-8")
    span = section.find_section(text, name)
    assert span is not None, f"docs/results.md has no {section.begin_marker(name)} section"
    loaded = data.read(DATA / name)
    assert text[span[0]:span[1]] == section.section_markdown(loaded, name)
    # The committed data hold no text: ids, labels and numbers only (never a prompt or an output excerpt).
    header = (DATA / name / "labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(data.LABEL_FIELDS)
    if any("arm" in r for r in loaded["manifest"]["runs"]):  # a grid with a trained arm-seed has its forest plot
        assert f"(results/{name}_forest.png)" in text[span[0]:span[1]]
        assert (ROOT / "docs" / "results" / f"{name}_forest.png").is_file()


@pytest.mark.parametrize("name", COMMITTED[:1])
def test_report_check_passes_on_the_page_and_fails_when_a_figure_is_edited(name, tmp_path, capsys):
    page = tmp_path / "results.md"
    shutil.copyfile(PAGE, page)
    args = ["report", "--from-data", str(DATA / name), "--into", str(page), "--check"]
    assert main(args) == 0
    text = page.read_text(encoding="utf-8")
    start, end = section.find_section(text, name)
    body = text[start:end]
    edited = body.replace("(n=", "(n=1", 1)
    assert edited != body
    page.write_text(text[:start] + edited + text[end:], encoding="utf-8")
    assert main(args) == 1
    assert f"section {name} differs" in capsys.readouterr().err
    # Without --check the section is rewritten (and its plot written beside the page).
    assert main(args[:-1]) == 0
    assert page.read_text(encoding="utf-8") == text
    assert (tmp_path / "results" / f"{name}_forest.png").read_bytes()[:4] == b"\x89PNG"


def test_replace_section_between_its_markers_or_appended():
    sec = f"{section.begin_marker('x')}\nnew\n{section.end_marker('x')}"
    page = f"# R\n\n{section.begin_marker('x')}\nold\n{section.end_marker('x')}\n\nReading.\n"
    assert section.replace_section(page, "x", sec) == f"# R\n\n{sec}\n\nReading.\n"
    assert section.replace_section("# R\n", "x", sec) == f"# R\n\n{sec}\n"
    with pytest.raises(CoherentizeError, match="has no <!-- /generated:x -->"):
        section.replace_section(f"{section.begin_marker('x')}\nold\n", "x", sec)


def write_small(folder):
    d = {"manifest": {"experiment": "e", "model": "m", "arms": ["a"], "seeds": [0], "n_boot": 50, "code": None,
                      "stage_seconds": {}, "format": data.FORMAT, "judge": "string",
                      "runs": [{"name": "baseline"}, {"name": "a-seed0", "arm": "a", "seed": 0}]},
         "items": {"baseline": {"m.x": {"i,1": 0.1, "i2": 1 / 3}}, "a-seed0": {"m.x": {"i,1": 0.2, "i2": None}}},
         "labels": {"baseline": [{"suite": "s", "id": "i,1", "prompt_id": "i", "family": "f", "label": "refused",
                                  "value": "1"}], "a-seed0": []}}
    data.write(d, folder)
    return d


def test_data_round_trip_is_exact(tmp_path):
    d = write_small(tmp_path / "d")
    back = data.read(tmp_path / "d")
    assert back == d  # floats bit for bit, ids with commas, None kept
    assert back["items"]["baseline"]["m.x"]["i2"] == 1 / 3


def test_accumulate_keeps_earlier_arm_seeds_newer_wins_and_refuses_another_model(tmp_path):
    import copy

    old = write_small(tmp_path / "d")
    new = copy.deepcopy(old)
    old["manifest"]["stage_seconds"] = {"train/a-seed0": 10.0, "baseline": 5.0}
    data.write(old, tmp_path / "d")
    new["manifest"]["code"] = {"version": "0.2", "source": "bbb"}
    new["manifest"]["stage_seconds"] = {"train/a-seed1": 12.0, "baseline": 6.0}
    new["manifest"]["runs"] = [{"name": "baseline"}, {"name": "a-seed1", "arm": "a", "seed": 1}]
    new["items"] = {"baseline": {"m.x": {"i,1": 0.5}}, "a-seed1": {"m.x": {"i,1": 0.7}}}
    new["labels"] = {"baseline": [], "a-seed1": []}
    data.accumulate(tmp_path / "d", new)
    got = data.read(tmp_path / "d")
    assert [r["name"] for r in got["manifest"]["runs"]] == ["baseline", "a-seed0", "a-seed1"]
    assert got["items"]["a-seed0"] == old["items"]["a-seed0"]  # kept from the earlier session
    assert got["items"]["baseline"] == {"m.x": {"i,1": 0.5}}  # the newer baseline
    assert got["manifest"]["seeds"] == [0, 1] and got["manifest"]["planned"] == ["a-seed1", "a-seed0"]
    # each session's stage times kept (the newer session's where both have one)
    assert got["manifest"]["stage_seconds"] == {"train/a-seed0": 10.0, "train/a-seed1": 12.0, "baseline": 6.0}
    assert [r["code"] for r in got["manifest"]["runs"]] == [new["manifest"]["code"], None, new["manifest"]["code"]]
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    other = copy.deepcopy(new)
    other["manifest"]["model"] = "m2"
    with pytest.raises(CoherentizeError, match=r"manifest\.json: model is 'm', these results' model is 'm2'"):
        data.accumulate(tmp_path / "d", other)
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before


def test_a_data_folders_selection_is_kept_by_accumulate_and_shown_in_its_section(tmp_path):
    import copy

    d = write_small(tmp_path / "d")
    d["items"]["a-seed0"]["m.x"]["i2"] = 0.4
    sel = {"a": {"chosen_learning_rate": 0.0002, "label": "", "candidates": [
        {"learning_rate": lr, "harmful_refusal": h, "n_harmful_prompts": 128, "benign_answer": 0.9, "n_benign": 24,
         "harmonic_mean": hm} for lr, h, hm in ((0.0001, 0.5, 0.643), (0.0002, 0.8, 0.847))]}}
    data.write({**d, "selection": sel}, tmp_path / "d")
    later = copy.deepcopy(d)
    later["manifest"]["runs"] = [{"name": "baseline"}, {"name": "a-seed1", "arm": "a", "seed": 1}]
    later["items"] = {"baseline": d["items"]["baseline"], "a-seed1": d["items"]["a-seed0"]}
    later["labels"] = {"baseline": [], "a-seed1": []}
    data.accumulate(tmp_path / "d", later)  # a later session's data bring no selection: the first one's stays
    back = data.read(tmp_path / "d")
    assert back["selection"] == sel
    text = section.section_markdown(back, "d")
    assert "### Learning rate chosen on validation" in text
    assert "| a | 0.0002 (chosen) | 0.800 (n=128) | 0.900 (n=24) | 0.847 |" in text


def test_bad_data_folders_name_the_file_and_line(tmp_path):
    write_small(tmp_path / "d")
    with pytest.raises(CoherentizeError, match=r"labels\.csv: not found"):
        (tmp_path / "d" / "labels.csv").unlink()
        data.read(tmp_path / "d")
    write_small(tmp_path / "d")
    with (tmp_path / "d" / "items.csv").open("a") as f:
        f.write("b-seed9,m.x,i2,0.5\n")
    with pytest.raises(CoherentizeError, match=r"items\.csv:6: run 'b-seed9' is not in manifest"):
        data.read(tmp_path / "d")
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({**man, "format": 99}))
    with pytest.raises(CoherentizeError, match="format 99, expected 1"):
        data.read(tmp_path / "d")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--from-data", str(tmp_path / "missing")]) == 2
    assert "manifest.json: not found" in capsys.readouterr().err
    assert main(["report", "--export", str(tmp_path)]) == 2
    assert "--export RUN_DIR needs --out DIR" in capsys.readouterr().err
    assert main(["report", "--export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no results data here" in capsys.readouterr().err


AUDITED = [n for n in COMMITTED if (DATA / n / data.AUDIT_FILE).is_file()]


def test_a_committed_judge_audit_holds_ids_hashes_and_labels_only_and_shows_per_model():
    import re

    from coherentize.evaluate import audit

    assert AUDITED, "no committed data folder carries a judge audit (judge_audit.csv)"
    assert max(len(audit.read_audit(DATA / n / data.AUDIT_FILE)) for n in AUDITED) >= 150
    for name in AUDITED:
        rows = audit.read_audit(DATA / name / data.AUDIT_FILE)
        header = list(rows[0])
        assert header[:len(audit.AUDIT_FIELDS)] == list(audit.AUDIT_FIELDS)
        assert all(k.startswith(audit.JUDGE_PREFIX) for k in header[len(audit.AUDIT_FIELDS):])
        assert all(re.fullmatch(r"[0-9a-f]{16}", r["output_sha256"]) for r in rows)
        assert all(len(v) <= 80 for r in rows for v in r.values())  # ids and labels, never an output's text
        page = PAGE.read_text(encoding="utf-8")
        start, end = section.find_section(page, name)
        body = page[start:end]
        assert "### Judge audit" in body
        manifest = json.loads((DATA / name / "manifest.json").read_text())
        for group in ["baseline", *manifest["arms"]]:
            assert f"| string | {section.render.md_text(group)} |" in body
