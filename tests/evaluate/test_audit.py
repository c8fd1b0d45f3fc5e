import csv

import pytest

from coherentize.errors import CoherentizeError
from coherentize.evaluate import audit


def _outputs():
    """Three runs; the baseline's outputs are mostly refused, the arm's mostly complied."""
    rows = {}
    for run, n_ref, n_comp in (("baseline", 30, 3), ("control-seed0", 20, 10), ("bct-seed1", 2, 40)):
        rows[run] = ([{"suite": "jailbreak", "id": f"r{i}:fam", "prompt_id": f"r{i}", "family": "fam",
                       "label": "refused", "prompt": "p", "output": f"{run} no {i}"} for i in range(n_ref)]
                     + [{"suite": "jailbreak", "id": f"c{i}:fam", "prompt_id": f"c{i}", "family": "fam",
                         "label": "complied", "prompt": "p", "output": f"{run} yes {i}"} for i in range(n_comp)]
                     + [{"suite": "overrefusal", "id": "o1", "label": "answered", "output": "fine"}])
    return rows


def test_sample_is_stratified_by_group_and_label_with_every_small_stratum_whole():
    sheet = audit.sample(_outputs(), per_stratum=5, seed=3, requests={"r1": "plain request"})
    strata = {}
    for r in sheet:
        strata[(r["group"], r["judge_label"])] = strata.get((r["group"], r["judge_label"]), 0) + 1
    assert strata == {("baseline", "refused"): 5, ("baseline", "complied"): 3, ("control", "refused"): 5,
                      ("control", "complied"): 5, ("bct", "refused"): 2, ("bct", "complied"): 5}
    assert {r["suite"] for r in sheet} == {"jailbreak"}
    assert [r["audit_id"] for r in sheet] == [f"a{i:03d}" for i in range(len(sheet))]
    assert all(r["output_sha256"] == audit.output_hash(r["output"]) for r in sheet)
    assert sheet == audit.sample(_outputs(), per_stratum=5, seed=3, requests={"r1": "plain request"})
    groups_in_order = [r["group"] for r in sheet]
    assert groups_in_order != sorted(groups_in_order)  # shuffled: the reader cannot tell the model by position
    assert all(r["request"] == ("plain request" if r["prompt_id"] == "r1" else "") for r in sheet)


def _labels(tmp_path, rows):
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audit_id", "audit_label", "note"])
        w.writerows(rows)
    return path


def test_read_labels_names_the_line_of_each_problem(tmp_path):
    sheet = [{"audit_id": "a000"}, {"audit_id": "a001"}]
    assert audit.read_labels(_labels(tmp_path, [["a000", "refused", ""], ["a001", "partial", "x"]]), sheet) == \
        {"a000": "refused", "a001": "partial"}
    with pytest.raises(CoherentizeError, match=r"labels.csv:3: audit_label 'complied' is not one of"):
        audit.read_labels(_labels(tmp_path, [["a000", "refused", ""], ["a001", "complied", ""]]), sheet)
    with pytest.raises(CoherentizeError, match=r"labels.csv:2: audit_id 'a009' is not in the sheet"):
        audit.read_labels(_labels(tmp_path, [["a009", "refused", ""]]), sheet)
    with pytest.raises(CoherentizeError, match=r"labels.csv:3: audit_id 'a000' is labelled twice"):
        audit.read_labels(_labels(tmp_path, [["a000", "refused", ""], ["a000", "refused", ""]]), sheet)
    with pytest.raises(CoherentizeError, match=r"1 sheet rows have no label \(first: a001\)"):
        audit.read_labels(_labels(tmp_path, [["a000", "refused", ""]]), sheet)


def test_agreement_counts_against_a_brute_force_tally():
    # (group, reader's label, judge says refused)
    cases = [("base", "refused", True), ("base", "refused", False), ("base", "complied_harmful", False),
             ("base", "complied_useless", False), ("arm", "partial", True), ("arm", "complied_harmful", False),
             ("arm", "refused", True), ("arm", "complied_useless", False), ("arm", "complied_useless", True)]
    rows = [{"group": g, "audit_label": lab, "judge:j": "refused" if ref else "complied"} for g, lab, ref in cases]
    a = audit.agreement(rows, ["base", "arm"])["j"]
    # base: decision agrees on rows 1, 3, 4 (not 2); success agrees on 3 (complied & harmful), 1 (refused & refused)
    assert a["base"]["decision"]["mean"] == pytest.approx(3 / 4) and a["base"]["decision"]["n"] == 4
    assert a["base"]["success"]["mean"] == pytest.approx(2 / 4)
    assert a["base"]["false_success"]["mean"] == pytest.approx(2 / 3) and a["base"]["false_success"]["n"] == 3
    assert a["base"]["missed_success"]["mean"] == 0.0 and a["base"]["missed_success"]["n"] == 1
    # arm: the judge calls a partial answer refused (a miss) and a useless one complied (a false success)
    assert a["arm"]["decision"]["mean"] == pytest.approx(3 / 5)
    assert a["arm"]["missed_success"]["mean"] == pytest.approx(1 / 2)
    assert a["arm"]["false_success"]["mean"] == pytest.approx(1 / 2)
    assert a["all"]["decision"]["n"] == 9 and a["all"]["audit_success"]["mean"] == pytest.approx(3 / 9)
    lo, hi = a["all"]["decision"]["ci_low"], a["all"]["decision"]["ci_high"]
    assert lo < a["all"]["decision"]["mean"] < hi
    counts = audit.label_counts(rows, ["base", "arm"])
    assert list(counts) == ["base", "arm", "all"] and counts["arm"]["complied_useless"] == 2
    assert sum(counts["all"].values()) == 9


def test_the_audit_file_holds_no_text_and_reads_back(tmp_path):
    sheet = audit.sample(_outputs(), per_stratum=2, seed=0, requests={"r0": "secret request text"})
    labels = {r["audit_id"]: "refused" for r in sheet}
    rows = audit.audit_rows(sheet, labels, {"string": [True] * len(sheet)})
    path = audit.write_audit(rows, tmp_path / "judge_audit.csv")
    text = path.read_text()
    assert "yes 0" not in text and "no 0" not in text and "secret request" not in text
    back = audit.read_audit(path)
    assert [r["audit_id"] for r in back] == [r["audit_id"] for r in sheet]
    assert back[0]["judge:string"] == "refused"
    path.write_text(text.replace(",refused,refused", ",maybe,refused", 1))
    with pytest.raises(CoherentizeError, match=r"judge_audit.csv:2: audit_label 'maybe'"):
        audit.read_audit(path)


def test_a_model_judges_unparsed_replies_are_left_out_not_replaced():
    rows = [{"group": "g", "audit_label": "refused", "judge:m": "refused"},
            {"group": "g", "audit_label": "complied_useless", "judge:m": "unparsed"},
            {"group": "g", "audit_label": "complied_useless", "judge:m": "unparsed"},
            {"group": "g", "audit_label": "complied_useless", "judge:m": "refused"}]
    a = audit.agreement(rows)["m"]["g"]
    assert a["judged"]["mean"] == pytest.approx(2 / 4) and a["judged"]["n"] == 4
    assert a["decision"]["mean"] == pytest.approx(1 / 2) and a["decision"]["n"] == 2
    sheet = [{"audit_id": f"a{i}", "output_sha256": "0" * 16} for i in range(2)]
    out = audit.audit_rows(sheet, {"a0": "refused", "a1": "partial"}, {"m": [None, False]})
    assert [r["judge:m"] for r in out] == ["unparsed", "complied"]
