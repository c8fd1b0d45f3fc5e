"""Train/eval overlap detection, by code: an evaluation must not score prompts or jailbreak families that the
training data contained, unless the user says it is deliberate (``allow_overlap``).

Checks (texts compared with ``clusters.prompt_key``: lower case, collapsed whitespace):
- text: an evaluation prompt equal to a training prompt (any cluster member), or an evaluation request of at least
  ``MIN_CONTAINED`` characters contained in a training prompt (a request that training saw inside a wrapper);
- family: a jailbreak family name that is also the family of a training variation (or listed as trained on).
"""

from __future__ import annotations

from typing import Iterable

from coherentize.clusters import Cluster, prompt_key
from coherentize.errors import CoherentizeError

MIN_CONTAINED = 20


def overlap_report(train_clusters: Iterable[Cluster], eval_prompts: dict[str, str],
                   eval_families: Iterable[str] = (), train_families: Iterable[str] = ()) -> dict:
    """{"text": [eval ids found in training], "families": [shared family names], "n_eval", "n_train_prompts"}."""
    train_keys, fams = set(), set(train_families)
    for c in train_clusters:
        train_keys.update(prompt_key(m) for m in c.members)
        fams.update(v.family for v in c.variations)
    joined = "\n".join(train_keys)
    text_hits = []
    for iid, text in eval_prompts.items():
        key = prompt_key(text)
        if key in train_keys or (len(key) >= MIN_CONTAINED and key in joined):
            text_hits.append(iid)
    return {
        "text": sorted(text_hits),
        "families": sorted(set(eval_families) & fams),
        "n_eval": len(eval_prompts),
        "n_train_prompts": len(train_keys),
    }


def check_overlap(report: dict, allow_overlap: bool = False, where: str = "evaluation") -> dict:
    """Raise a CoherentizeError on any overlap unless allow_overlap; return the report with 'allowed' set."""
    if (report["text"] or report["families"]) and not allow_overlap:
        parts = []
        if report["families"]:
            parts.append(f"jailbreak famil{'y' if len(report['families']) == 1 else 'ies'} {report['families']} "
                         "also used in training")
        if report["text"]:
            shown = report["text"][:5]
            parts.append(f"{len(report['text'])} evaluation prompt(s) also in the training data (e.g. {shown})")
        raise CoherentizeError(
            f"{where}: {'; '.join(parts)}. Held-out evaluation would be contaminated: drop them from the evaluation "
            "(jailbreak_families / prompt sources), or pass --allow-overlap (allow_overlap: true) if it is deliberate."
        )
    return {**report, "allowed": bool(allow_overlap) and bool(report["text"] or report["families"])}
