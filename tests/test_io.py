"""The one atomic write (coherentize.io): a reader sees a whole file or none, and writers of the same path never
collide, because each writes under a temporary name of its own. The one reader of a CSV file with a known header."""

import threading

import pytest

from coherentize.clusters import Cluster, Variation, load_clusters, write_clusters
from coherentize.errors import CoherentizeError
from coherentize.io import atomic_dir, atomic_open, atomic_write, csv_rows


def _race(target, n_threads: int = 8, rounds: int = 30):
    """Run target(thread, round) from n_threads threads at once; returns the exceptions they raised."""
    errors, start = [], threading.Barrier(n_threads)

    def run(i):
        start.wait()
        for r in range(rounds):
            try:
                target(i, r)
            except Exception as e:  # noqa: BLE001 - collected and asserted on
                errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_writers_of_one_path_leave_a_whole_file(tmp_path):
    path = tmp_path / "responses.jsonl"
    payloads = [(f"{i}" * 200_000) for i in range(8)]  # 200 KB each: a write takes several system calls
    seen = []

    def write(i, _r):
        atomic_write(path, payloads[i])
        seen.append(path.read_text())

    assert _race(write) == []
    assert all(text in payloads for text in seen)  # never a mix, never a cut file
    assert [p.name for p in tmp_path.iterdir()] == ["responses.jsonl"]  # no temporary file left


def test_concurrent_write_clusters_never_collide(tmp_path):
    """clusters.write_clusters (the variations stage, mining, control data) from several jobs at once: the fixed
    '<name>.tmp' of the old code made one writer's rename fail or move another's half-written file into place."""
    path = tmp_path / "train.jsonl"
    sets = [[Cluster(f"t{i}-{k}", f"anchor {k} " * 50, [Variation(f"variation {k} " * 50, "wrapper")])
             for k in range(200)] for i in range(6)]

    def write(i, _r):
        write_clusters(path, sets[i])
        got = load_clusters(path)
        assert len(got) == 200 and len({c.id.split("-")[0] for c in got}) == 1

    assert _race(write, n_threads=6, rounds=10) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "done.json"
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["done.json"]


def test_atomic_dir_keeps_the_first_finished_build_when_asked(tmp_path):
    target = tmp_path / "organism"
    with atomic_dir(target, replace=False) as a, atomic_dir(target, replace=False) as b:
        assert a != b and a.parent == b.parent == tmp_path  # two builds, two folders
        (a / "which").write_text("a")
        (b / "which").write_text("b")
    assert (target / "which").read_text() == "b"  # b finished first (the inner block ends first)
    with atomic_dir(target) as c:
        (c / "which").write_text("c")
    assert (target / "which").read_text() == "c"  # replace=True: a rebuild replaces it
    assert [p.name for p in tmp_path.iterdir()] == ["organism"]


def test_written_files_get_the_usual_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (atomic_write(tmp_path / "atomic", "x").stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_csv_rows_come_with_their_line_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,x\n\n2,"two\nlines"\n3,z\n')  # a blank line and a quoted newline shift the lines
    assert list(csv_rows(path, ("a", "b"))) == [(2, {"a": "1", "b": "x"}), (5, {"a": "2", "b": "two\nlines"}),
                                               (6, {"a": "3", "b": "z"})]


@pytest.mark.parametrize("header, extra, message", [
    ("b,a", "", r"t\.csv: columns \['b', 'a'\], expected \['a', 'b'\]\.$"),  # exact: order counts
    ("a,b,c", "", r"t\.csv: columns \['a', 'b', 'c'\], expected \['a', 'b'\]\.$"),
    ("", "", r"t\.csv: columns \[\], expected \['a', 'b'\]\.$"),
    ("a,c", "judge:<name>", r"t\.csv: columns \['b'\] missing \(expected \['a', 'b'\] \+ judge:<name>; "
                            r"found \['a', 'c'\]\)\.$"),
])
def test_a_wrong_csv_header_is_one_error_naming_the_file(tmp_path, header, extra, message):
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\n1,2\n")
    with pytest.raises(CoherentizeError, match=message):
        list(csv_rows(path, ("a", "b"), extra=extra))


def test_csv_rows_with_extra_columns_take_any_order_and_report_a_missing_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("judge:x,b,a\nrefused,2,1\n")
    assert list(csv_rows(path, ("a", "b"), extra="judge:<name>")) == [(2, {"judge:x": "refused", "b": "2", "a": "1"})]
    with pytest.raises(CoherentizeError, match=r"nope\.csv: labels file not found\.$"):
        list(csv_rows(tmp_path / "nope.csv", ("a", "b"), what="labels file"))
