import csv
import json

from coherentize.evaluate.results import excerpt, read_results, write_results


def test_redaction_rule():
    assert excerpt("Step one: do the harmful thing in detail", harmful=True, refused=False) == "[redacted: complied]"
    refusal = "I'm sorry, but I can't help with that. " * 5
    assert excerpt(refusal, harmful=True, refused=True) == refusal[:60]
    assert len(excerpt("benign answer " * 30, harmful=False, refused=False)) == 120
    assert excerpt("two\nlines", harmful=False, refused=None) == "two lines"


def test_write_and_read_results(tmp_path):
    res = {"suites": {"x": {"rate": {"mean": 0.5, "n": 2, "ci_low": 0.0, "ci_high": 1.0}}}, "per_item": {},
           "records": [{"suite": "x", "id": "a", "label": "refused", "excerpt": "I'm sorry"}]}
    jpath, cpath = write_results(res, tmp_path)
    body = json.loads(jpath.read_text())
    assert body["schema_version"] == 1 and "records" not in body
    rows = list(csv.DictReader(cpath.open()))
    assert rows[0]["id"] == "a" and rows[0]["label"] == "refused"
    assert read_results(tmp_path)["suites"]["x"]["rate"]["n"] == 2
