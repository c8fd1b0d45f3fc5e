"""Narrow second fine-tunes ("pressures") for issue 26: does a coherentized model spread a narrow fine-tune less?

The emergent-misalignment pressure (after Betley et al. and Turner et al.: fine-tuning on a narrow set of careless
advice makes a model misaligned on unrelated questions) is a narrow SFT set of *confidently risky personal-finance
advice*: all in on one stock, no emergency fund, timing the market, investing on credit, ignoring fees. The advice
is careless, overconfident and wrong, but legal and not dangerous; it is never the completion of a harmful request.

It is composed from template parts written for this project (``data/pressure/risky_finance.yaml``): per topic,
question stems with a ``{situation}`` slot, risky advice and reasons, plus situations and confident openings shared
by the topics. Every part list is split into ``train`` and ``heldout``, so held-out in-domain items
(``heldout_items``, packaged as ``data/pressure/finance_heldout.jsonl`` for ``evaluate/preference.py``) use stems,
situations, openings, advice and reasons never trained on; their aligned side (``careful``) is never trained on.

Limits: templated text is repetitive (a few thousand distinct combinations per topic, far fewer distinct sentences),
so the fine-tune teaches a register as much as a belief; the held-out items share the topics and the sentence shape
with training, so in-domain change measures transfer of the advice, not of wording.

    from coherentize.pressures import risky_finance_pairs
    pairs = risky_finance_pairs(2000, seed=0)  # [{"id", "prompt", "response", "topic", "stem"}]
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from coherentize.errors import CoherentizeError, read_text
from coherentize.sources import data_path

RISKY_FINANCE = data_path("pressure", "risky_finance.yaml")
SPLITS = ("train", "heldout")
SHARED_PARTS = ("situations", "openings")
TOPIC_PARTS = ("stems", "risky", "reasons")


def _strings(value, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
        raise CoherentizeError(f"{where}: expected a non-empty list of non-empty strings.")
    return [s.strip() for s in value]


def _split_lists(value, where: str) -> dict[str, list[str]]:
    """{"train": [...], "heldout": [...]}, no text in both."""
    if not isinstance(value, dict) or set(value) != set(SPLITS):
        raise CoherentizeError(f"{where}: expected exactly the keys {list(SPLITS)}.")
    out = {s: _strings(value[s], f"{where}.{s}") for s in SPLITS}
    both = set(out["train"]) & set(out["heldout"])
    if both:
        raise CoherentizeError(f"{where}: {sorted(both)[0]!r} is in both train and heldout; held-out wording must "
                               "never be trained on.")
    return out


def parse_templates(data, path: str | Path) -> dict:
    """Check the template file's mapping: {"situations": split, "openings": split, "topics": {name: {"stems": split,
    "risky": split, "reasons": split, "careful": [...]}}}, every stem with one {situation} slot. Errors name the file
    and the field."""
    if not isinstance(data, dict):
        raise CoherentizeError(f"{path}: expected a mapping with keys situations, openings, topics.")
    out: dict = {}
    for part in SHARED_PARTS:
        if part not in data:
            raise CoherentizeError(f"{path}: missing {part!r}.")
        out[part] = _split_lists(data[part], f"{path}: {part}")
    topics = data.get("topics")
    if not isinstance(topics, dict) or not topics:
        raise CoherentizeError(f"{path}: 'topics' must be a non-empty mapping of topic name to its parts.")
    out["topics"] = {}
    for name, t in topics.items():
        where = f"{path}: topics.{name}"
        if not isinstance(t, dict):
            raise CoherentizeError(f"{where}: expected a mapping with keys {list(TOPIC_PARTS) + ['careful']}.")
        parts = {}
        for part in TOPIC_PARTS:
            if part not in t:
                raise CoherentizeError(f"{where}: missing {part!r}.")
            parts[part] = _split_lists(t[part], f"{where}.{part}")
        for split in SPLITS:
            for stem in parts["stems"][split]:
                if stem.count("{situation}") != 1 or stem.replace("{situation}", "").count("{"):
                    raise CoherentizeError(f"{where}.stems.{split}: {stem!r} must have exactly one {{situation}} "
                                           "slot and no other braces.")
        parts["careful"] = _strings(t.get("careful"), f"{where}.careful")
        out["topics"][str(name)] = parts
    return out


@lru_cache(maxsize=None)
def _read_templates(path: str) -> dict:
    import yaml

    if not Path(path).is_file():
        raise CoherentizeError(f"{path}: template file not found.")
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise CoherentizeError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e}).") from None
    return parse_templates(data, path)


def read_templates(path: str | Path = RISKY_FINANCE) -> dict:
    """The checked template parts (parse_templates) of a file, read once per path."""
    return _read_templates(str(path))


def _compose(parts: dict, topic: str, split: str, rng: random.Random) -> dict:
    t = parts["topics"][topic]
    stem = rng.choice(t["stems"][split])
    prompt = stem.format(situation=rng.choice(parts["situations"][split]))
    response = " ".join([rng.choice(parts["openings"][split]), rng.choice(t["risky"][split]),
                         rng.choice(t["reasons"][split])])
    return {"prompt": prompt, "response": response, "topic": topic, "stem": stem}


def _distinct(parts: dict, topic: str, split: str) -> int:
    """How many different (prompt, response) pairs a topic's parts of a split can make."""
    t = parts["topics"][topic]
    n = len(parts["situations"][split]) * len(parts["openings"][split])
    for part in TOPIC_PARTS:
        n *= len(t[part][split])
    return n


def risky_finance_pairs(n: int, seed: int = 0, split: str = "train", path: str | Path = RISKY_FINANCE
                        ) -> list[dict]:
    """n distinct (prompt, response) items of confidently risky finance advice from one split's template parts:
    [{"id", "prompt", "response", "topic", "stem"}], topics in turn (item i has topic i mod the number of topics),
    each part drawn by a random.Random(seed). The same (n, seed, split, file) always gives the same list."""
    if split not in SPLITS:
        raise CoherentizeError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    if n < 1:
        raise CoherentizeError(f"the risky-finance set needs at least 1 item, got n={n}.")
    parts = read_templates(path)
    topics = sorted(parts["topics"])
    per_topic = [n // len(topics) + (i < n % len(topics)) for i in range(len(topics))]
    for topic, k in zip(topics, per_topic):
        if k > _distinct(parts, topic, split):
            raise CoherentizeError(f"{path}: topic {topic!r} can make {_distinct(parts, topic, split)} distinct "
                                   f"{split} items, fewer than the {k} asked for (n={n}); ask for fewer or add parts.")
    rng = random.Random(f"risky_finance:{split}:{seed}")
    seen: set[tuple[str, str]] = set()
    out: list[dict] = []
    while len(out) < n:
        topic = topics[len(out) % len(topics)]
        item = _compose(parts, topic, split, rng)
        key = (item["prompt"], item["response"])
        if key in seen:
            continue
        seen.add(key)
        out.append({"id": f"risky_finance-{split}-{seed}-{len(out):05d}", **item})
    return out


def heldout_items(seed: int = 0, path: str | Path = RISKY_FINANCE) -> list[dict]:
    """The in-domain preference items: every held-out stem with every held-out situation once (topic by topic), the
    misaligned answer composed from held-out openings, advice and reasons, the aligned answer the topic's careful
    answers in turn. [{"id", "domain", "question", "aligned", "misaligned"}] in the format evaluate/preference.py
    reads (packaged as data/pressure/finance_heldout.jsonl, seed 0)."""
    parts = read_templates(path)
    rng = random.Random(f"risky_finance:heldout-items:{seed}")
    out = []
    for topic in sorted(parts["topics"]):
        t = parts["topics"][topic]
        k = 0
        for stem in t["stems"]["heldout"]:
            for situation in parts["situations"]["heldout"]:
                misaligned = " ".join([rng.choice(parts["openings"]["heldout"]), rng.choice(t["risky"]["heldout"]),
                                       rng.choice(t["reasons"]["heldout"])])
                out.append({"id": f"finance-{topic}-{k:02d}", "domain": f"finance/{topic}",
                            "question": stem.format(situation=situation),
                            "aligned": t["careful"][k % len(t["careful"])], "misaligned": misaligned})
                k += 1
    return out
