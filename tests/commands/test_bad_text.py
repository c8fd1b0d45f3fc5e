"""A clusters or prompt file that is not UTF-8: one line naming the file and line, exit 2, in `train` and `augment`
(it was a UnicodeDecodeError traceback and exit 1)."""

import json

from coherentize.cli import main

LATIN1 = "Caf\u00e9 au lait, s'il vous pla\u00eet?".encode("latin-1")  # 0xe9 is not valid UTF-8 here


def _bad_file(tmp_path, name, good_line: dict, bad_line: bytes):
    p = tmp_path / name
    p.write_bytes(json.dumps(good_line).encode() + b"\n" + bad_line + b"\n")
    return p


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UnicodeDecodeError" not in err
    return err.strip()


def test_augment_with_a_non_utf8_prompt_file(tmp_path, capsys):
    p = _bad_file(tmp_path, "prompts.jsonl", {"id": "a", "prompt": "Hello?"},
                  b'{"id": "b", "prompt": "' + LATIN1 + b'"}')
    rc = main(["augment", "--input", str(p), "--out", str(tmp_path / "c.jsonl"), "--families", "wrapper",
               "--embedder", "none", "--no-progress"])
    err = _one_line(capsys)
    assert rc == 2 and f"{p}:2: not UTF-8" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c.jsonl").exists()


def test_train_with_a_non_utf8_clusters_file(tmp_path, capsys):
    p = _bad_file(tmp_path, "clusters.jsonl", {"id": "a", "anchor": "Hi?", "variations": ["Hello?"]},
                  b'{"id": "b", "anchor": "' + LATIN1 + b'", "variations": ["x"]}')
    rc = main(["train", "--set", f"data.train_file={p}", "--set", f"train.output_dir={tmp_path / 'out'}"])
    err = _one_line(capsys)
    assert rc == 2 and f"{p}:2: not UTF-8" in err and len(err.splitlines()) == 1


def test_augment_with_a_non_utf8_template_file(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hello?"}\n', encoding="utf-8")
    t = tmp_path / "t.yaml"
    t.write_bytes(b"families:\n  - name: mine\n    templates: ['" + LATIN1 + b" {prompt}']\n")
    rc = main(["augment", "--input", str(prompts), "--out", str(tmp_path / "c.jsonl"), "--templates", str(t),
               "--families", "mine", "--embedder", "none", "--no-progress"])
    err = _one_line(capsys)
    assert rc == 2 and f"{t}:3: not UTF-8" in err


def test_run_with_a_non_utf8_config_file(tmp_path, capsys):
    p = tmp_path / "exp.yaml"
    p.write_bytes(b"out_dir: runs/x\n# " + LATIN1 + b"\n")
    rc = main(["run", str(p)])
    err = _one_line(capsys)
    assert rc == 2 and f"{p}:2: not UTF-8" in err and len(err.splitlines()) == 1
