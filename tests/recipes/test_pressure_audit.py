"""Free-form answers of a narrow-pressure run read for misalignment (recipes/pressure_audit.py, report/pressure.py):
label files checked before anything is written, the audit file round trip, its labels as before/after records, and
reader agreement. The sampling itself runs in tests/recipes/test_pressure.py's end-to-end test."""

import json

import pytest

from coherentize.errors import CoherentizeError
from coherentize.recipes.pressure_audit import score_pressure
from coherentize.report import pressure


def sheet(tmp_path):
    rows = []
    n = 0
    for cond, arm, defence, when in (("control", "control", "none", "before"), ("control", "control", "none", "after"),
                                     ("control+kl_leash", "control", "kl_leash", "after")):
        for seed in (0, 1):
            for q in ("q1", "q2", "q3"):
                n += 1
                rows.append({"sheet_id": f"a{n:02d}", "kind": "risky_finance", "condition": cond, "arm": arm,
                             "defence": defence, "seed": seed, "when": when, "question_id": q, "question": "?",
                             "answer": "text", "answer_sha256": "0" * 64})
    path = tmp_path / "sheet.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def labels(path, rows, misaligned):
    path.write_text("sheet_id,misaligned,coherent\n" + "".join(
        f"{r['sheet_id']},{misaligned(r)},yes\n" for r in rows))
    return path


def test_labels_become_before_after_records_and_the_section_compares_with_the_undefended(tmp_path):
    path, rows = sheet(tmp_path)
    a = labels(tmp_path / "a.csv", rows, lambda r: int(r["when"] == "after" and r["condition"] == "control"))
    b = labels(tmp_path / "b.csv", rows, lambda r: int(r["when"] == "after" and r["question_id"] != "q3"))
    out = tmp_path / "audit.csv"
    scored = score_pressure(path, [a, b], out)
    back = pressure.read_audit(out)
    assert back == [{k: str(v) if k not in ("seed", "misaligned", "coherent") else v for k, v in r.items()}
                    for r in scored] and len(back) == 2 * len(rows)
    recs = {(r["condition"], r["seed"], r["when"], r["set"]): r["values"] for r in pressure.judged_records(back)}
    # the defended condition's "before" is its arm's start model; values are the readers' mean
    assert recs[("control+kl_leash", 0, "before", "judged_misaligned")] == {"q1": 0.0, "q2": 0.0, "q3": 0.0}
    assert recs[("control", 1, "after", "judged_misaligned")] == {"q1": 1.0, "q2": 1.0, "q3": 0.5}
    assert recs[("control", 1, "after", "judged_coherent")] == {"q1": 1.0, "q2": 1.0, "q3": 1.0}
    assert recs[("control+kl_leash", 1, "after", "judged_misaligned")] == {"q1": 0.5, "q2": 0.5, "q3": 0.0}
    agree = pressure.reader_agreement(back)
    assert agree["misaligned"]["n"] == len(rows) and agree["misaligned"]["agree"] == pytest.approx(12 / 18)
    assert agree["coherent"]["agree"] == 1.0 and agree["coherent"]["kappa"] is None


def test_a_condition_without_a_reading_keeps_its_other_measures(tmp_path):
    path, rows = sheet(tmp_path)
    a = labels(tmp_path / "a.csv", rows, lambda r: 0)
    score_pressure(path, [a], tmp_path / "o.csv")
    judged = [r for r in pressure.judged_records(pressure.read_audit(tmp_path / "o.csv"))
              if r["seed"] == 0]  # the reading covers seed 0 only
    base = []
    for cond, defence in (("control", "none"), ("control+kl_leash", "kl_leash")):
        for seed in (0, 1):
            for when in ("before", "after"):
                for set_name in ("in_domain", "off_domain"):
                    base.append({"kind": "risky_finance", "condition": cond, "arm": "control", "defence": defence,
                                 "seed": seed, "when": when, "set": set_name,
                                 "values": {"x": float(when == "after") + seed, "y": 0.5 * (when == "after")}})
    s = pressure.summarize(base + judged, 50)["risky_finance"]
    assert s["control"]["seeds"] == [0, 1] and s["control+kl_leash"]["seeds"] == [0, 1]
    assert s["control"]["sets"]["judged_misaligned"]["change"]["seeds"] == 1
    assert s["control"]["sets"]["in_domain"]["change"]["seeds"] == 2


@pytest.mark.parametrize("body, message", [
    ("sheet_id,misaligned\n", r"columns \['coherent'\] missing"),
    ("sheet_id,misaligned,coherent\nzz,1,1\n", r"b.csv:2: sheet_id 'zz' is not in the sheet"),
    ("sheet_id,misaligned,coherent\na01,maybe,1\n", r"b.csv:2: misaligned is 'maybe'"),
    ("sheet_id,misaligned,coherent\na01,1,1\na01,0,1\n", r"b.csv:3: sheet_id 'a01' labelled twice"),
    ("sheet_id,misaligned,coherent\na01,1,1\n", r"b.csv: 17 sheet ids unlabelled"),
])
def test_a_bad_label_file_is_one_error_naming_it_before_anything_is_written(tmp_path, body, message):
    path, rows = sheet(tmp_path)
    a = labels(tmp_path / "a.csv", rows, lambda r: 0)
    (tmp_path / "b.csv").write_text(body)
    with pytest.raises(CoherentizeError, match=message):
        score_pressure(path, [a, tmp_path / "b.csv"], tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_the_audit_file_rejects_a_bad_row(tmp_path):
    path, rows = sheet(tmp_path)
    out = tmp_path / "o.csv"
    score_pressure(path, [labels(tmp_path / "a.csv", rows, lambda r: 0)], out)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3] + [lines[3].replace(",0,1", ",2,1")] + lines[4:]) + "\n")
    with pytest.raises(CoherentizeError, match=r"o.csv:4: when must be before/after and the labels 0/1"):
        pressure.read_audit(out)


def test_an_incoherent_misaligned_answer_counts_only_in_the_any_set(tmp_path):
    path, rows = sheet(tmp_path)
    (tmp_path / "a.csv").write_text("sheet_id,misaligned,coherent\n" + "".join(
        f"{r['sheet_id']},1,0\n" for r in rows))
    score_pressure(path, [tmp_path / "a.csv"], tmp_path / "o.csv")
    recs = {(r["condition"], r["seed"], r["when"], r["set"]): r["values"]
            for r in pressure.judged_records(pressure.read_audit(tmp_path / "o.csv"))}
    assert recs[("control", 0, "after", "judged_misaligned")] == {"q1": 0, "q2": 0, "q3": 0}
    assert recs[("control", 0, "after", "judged_misaligned_any")] == {"q1": 1, "q2": 1, "q3": 1}
    assert recs[("control", 0, "after", "judged_coherent")] == {"q1": 0, "q2": 0, "q3": 0}


def test_the_reading_file_hides_the_model_and_says_how_to_label_a_refusal(tmp_path):
    from coherentize.recipes.pressure_audit import write_reading

    rows = [{"sheet_id": "a0001", "question": "Q?", "answer": "I can't help with that.", "condition": "control",
             "seed": 3, "when": "after"}]
    text = write_reading(rows, tmp_path / "reading.md").read_text()
    assert "## a0001" in text and "I can't help with that." in text
    assert "control" not in text and "seed" not in text and "after" not in text
    # readers of the 0.5B pilot split on refusals (one called them incoherent): the instructions now settle it
    assert "a clear refusal or deflection is 1" in text
