import json

import pytest

from coherentize.clusters import Cluster, LoadReport, Variation, load_clusters, write_clusters
from coherentize.errors import CoherentizeError


def write(tmp_path, lines):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return p


GOOD = {"id": "a", "anchor": "What is 2+2?", "variations": ["Q: 2+2?", {"prompt": "Please: 2+2?", "family": "wrapper"}]}


def test_round_trip_keeps_families_messages_and_tags(tmp_path):
    chat = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "What is 2+2?"}]
    c = Cluster("x", "What is 2+2?", [Variation(chat, "persona")], ["Four."], {"split": "train"})
    write_clusters(tmp_path / "o.jsonl", [c])
    (back,) = load_clusters(tmp_path / "o.jsonl")
    assert back == c and back.families == ["anchor", "persona"] and back.split == "train"
    assert not (tmp_path / "o.jsonl.tmp").exists()


def test_string_variation_gets_unspecified_family(tmp_path):
    (c,) = load_clusters(write(tmp_path, [GOOD]))
    assert c.families == ["anchor", "unspecified", "wrapper"] and len(c.members) == 3


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a", "anchor": "x", "variations": ["y"]', "c.jsonl:2: not valid JSON"),
        ({"id": "a", "variations": ["y"]}, "c.jsonl:2: missing 'anchor'"),
        ({"id": "a", "anchor": "  ", "variations": ["y"]}, "c.jsonl:2: anchor: empty prompt"),
        ({"id": "a", "anchor": "x", "variations": [""]}, "variation 0: empty prompt"),
        ({"anchor": "x", "variations": ["y"]}, "missing or empty 'id'"),
        ({"id": "a", "anchor": "x", "variations": ["y"], "colour": 1}, "unknown field(s) ['colour']"),
        ({"id": "a", "anchor": [{"role": "bot", "content": "x"}], "variations": ["y"]}, "role 'bot'"),
        ({"id": "first", "anchor": "x", "variations": ["y"]}, "duplicate cluster id 'first' (first on line 1)"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    first = {"id": "first", "anchor": "p", "variations": ["q"]}
    with pytest.raises(CoherentizeError) as e:
        load_clusters(write(tmp_path, [first, line]))
    assert message in str(e.value)


def test_cluster_of_one_is_an_error_or_an_explicit_counted_skip(tmp_path):
    path = write(tmp_path, [GOOD, {"id": "lonely", "anchor": "alone"}])
    with pytest.raises(CoherentizeError, match=r"c.jsonl:2: cluster 'lonely' has only its anchor"):
        load_clusters(path)
    report = LoadReport()
    kept = load_clusters(path, on_too_small="skip", report=report)
    assert [c.id for c in kept] == ["a"] and report.skipped_too_small == 1 and report.kept == 1


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(CoherentizeError, match="file not found"):
        load_clusters(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(CoherentizeError, match="no usable clusters"):
        load_clusters(tmp_path / "e.jsonl")


def test_packaged_demo_clusters_are_valid_and_split():
    from coherentize.sources import data_path

    clusters = load_clusters(data_path("clusters", "demo.jsonl"))
    train = [c for c in clusters if c.split == "train"]
    assert len(train) >= 8 and all(len(c.variations) >= 4 for c in clusters)
    assert {c.split for c in clusters} == {"train", "test"}
