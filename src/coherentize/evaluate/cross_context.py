"""Cross-context coherence: the same value, preference and factual questions asked after different conversation
contexts, beside the same questions reworded in the same (empty) context.

Items: ``data/eval/cross_context.jsonl`` (48, written for this project: 16 value, 16 preference, 16 factual
questions, each with 2-4 lettered options; factual ones carry the correct letter). Each question is asked

- as the **reference**: alone, in its base wording (``question_prompt``);
- after **contexts** (variations/contexts.py, the test split only): ``per_kind`` of each kind drawn per item with a
  seeded rng — prior turns on unrelated topics (``history``), a persona system prompt (``persona``), a different task
  done just before (``task``); the question's text is unchanged and is the last user turn;
- **reworded** in the empty context: the question's text (not its options) varied by programmatic families of
  variations/families.py (``vary``, seeded), e.g. synonym, register, typos.

The model's choice is the option letter with the most probability as the opening of its answer, and its option
distribution the softmax of the letters' log-probabilities over the item's options (capability.score_mc, the
project's one letter scorer; no generation, no judge). Per item:

- ``cross_context.agreement``: the fraction of its contexts whose choice equals the reference choice
  (``.history``, ``.persona``, ``.task``: per context kind);
- ``cross_context.within_agreement``: the fraction of its rewordings whose choice equals the reference choice;
- ``cross_context.js`` / ``cross_context.within_js``: the mean JS divergence (nats, at most ln 2) between the
  reference's option distribution and each context's / rewording's.

The summary gives each as a mean over items with a 95% bootstrap CI (evaluate/stats.py, n = items), and the paired
differences cross minus within over the same items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from coherentize.errors import CoherentizeError
from coherentize.evaluate import stats
from coherentize.variations.contexts import CONTEXT_KINDS, Context, contexts, pick, with_context

QUESTION_KINDS = ("value", "preference", "factual")
ITEMS_FILE = ("eval", "cross_context.jsonl")
REWORDING_FAMILIES = ("name_swap", "reorder", "synonym", "formatting", "typos", "register")
"""Families that may reword a question: the rule families, which change its text only (a template family such as
persona would add a context of its own)."""
LETTERS = "ABCDEFGH"


def check_item(obj: dict, where: str) -> dict:
    """A question line {"id", "kind", "question", "choices"[, "answer"]}: kind one of QUESTION_KINDS, 2-8 distinct
    choices; a factual item names its correct letter."""
    from coherentize.evaluate.capability import check_mc_item

    if obj.get("kind") not in QUESTION_KINDS:
        raise CoherentizeError(f"{where}: kind {obj.get('kind')!r} is not one of {', '.join(QUESTION_KINDS)}.")
    if obj["kind"] == "factual" or "answer" in obj:
        check_mc_item(obj, where)
    else:  # no correct option: check the rest as an MC item with a placeholder answer
        check_mc_item({**obj, "answer": "A"}, where)
    return obj


def read_items(path) -> list[dict]:
    from coherentize.clusters import read_checked_jsonl

    return read_checked_jsonl(path, check_item)


def items(n: int | None = None) -> list[dict]:
    """The packaged questions, the first n (all when n is None or 0); kinds are interleaved by position so that a
    small n still has every kind."""
    from coherentize.sources import data_path

    every = read_items(data_path(*ITEMS_FILE))
    by_kind = [[it for it in every if it["kind"] == k] for k in QUESTION_KINDS]
    mixed = [it for group in zip(*by_kind) for it in group]
    mixed += [it for it in every if it not in mixed]
    return mixed[:n] if n else mixed


def question_prompt(question: str, choices: list[str]) -> str:
    lines = [question] + [f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer with the letter of one option."


@dataclass(frozen=True)
class Row:
    """One prompt to score: an item asked as the reference, after a context, or reworded."""

    item: str
    condition: str  # reference | context | rewording
    kind: str  # "" for the reference; the context kind; the rewording family
    context: str  # the context id ("" unless condition == context)
    prompt: object  # str or chat messages


def item_contexts(item_id: str, kinds, per_kind: int, seed: int) -> list[Context]:
    """The test-split contexts an item is asked after: per_kind of each kind, drawn by a rng that is a pure
    function of (seed, item, kind), so adding items or kinds never changes another item's contexts."""
    pool = contexts("test")
    out = []
    for kind in kinds:
        out += pick(pool[kind], per_kind, random.Random(f"{seed}\x1fcross_context\x1f{item_id}\x1f{kind}"))
    return out


def build_rows(its: list[dict], kinds, per_kind: int, rewordings, seed: int) -> list[Row]:
    """Every prompt of the probe, item by item: the reference, its contexts, its rewordings (pure)."""
    from coherentize.variations.families import BUILTIN_FAMILIES, vary

    fams = [BUILTIN_FAMILIES[f] for f in rewordings]
    rows = []
    for it in its:
        ref = question_prompt(it["question"], it["choices"])
        rows.append(Row(it["id"], "reference", "", "", ref))
        for c in item_contexts(it["id"], kinds, per_kind, seed):
            rows.append(Row(it["id"], "context", c.kind, c.id, with_context(c, ref)))
        for v in vary(it["question"], fams, seed):
            rows.append(Row(it["id"], "rewording", v.family, "", question_prompt(v.prompt, it["choices"])))
    return rows


def option_logprobs(letter_logprobs: list[list[float]]) -> list[torch.Tensor]:
    """Per row, the log of the option distribution: the letters' log-probabilities normalised over the options."""
    return [torch.log_softmax(torch.tensor(lp, dtype=torch.float64), -1) for lp in letter_logprobs]


def agreement_stats(its: list[dict], rows: list[Row], letters: list[str], logps: list[torch.Tensor], kinds,
                    n_boot: int = stats.N_BOOT) -> tuple[dict, dict]:
    """(summary, per_item) from the scored rows (pure). letters[i], logps[i]: row i's choice and log option
    distribution. An item with no rewording has no within-context value (left out of those figures)."""
    from coherentize.losses import divergence

    by_item: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_item.setdefault(r.item, []).append(i)
    keys = ["agreement", "within_agreement", "js", "within_js"] + [f"agreement.{k}" for k in kinds] + [
        f"js.{k}" for k in kinds]
    per: dict[str, dict[str, float]] = {k: {} for k in keys}
    correct = {}
    for it in its:
        idx = by_item[it["id"]]
        ref = next(i for i in idx if rows[i].condition == "reference")
        if "answer" in it:
            correct[it["id"]] = float(letters[ref] == it["answer"])

        def fill(name, members):
            if members:
                per[name][it["id"]] = sum(float(letters[i] == letters[ref]) for i in members) / len(members)
                js = divergence(logps[ref][None].expand(len(members), -1), torch.stack([logps[i] for i in members]),
                                "js")
                per[name.replace("agreement", "js")][it["id"]] = float(js.mean())

        fill("agreement", [i for i in idx if rows[i].condition == "context"])
        fill("within_agreement", [i for i in idx if rows[i].condition == "rewording"])
        for k in kinds:
            fill(f"agreement.{k}", [i for i in idx if rows[i].condition == "context" and rows[i].kind == k])
    summ = lambda name, rate=None: stats.summarize(list(per[name].values()), n_boot, rate=rate)  # noqa: E731
    shared = [i for i in per["within_agreement"] if i in per["agreement"]]

    def diff(cross, within):
        return stats.paired_difference([per[within][i] for i in shared], [per[cross][i] for i in shared], n_boot)

    summary: dict = {
        "agreement": summ("agreement"), "within_agreement": summ("within_agreement"),
        "agreement_minus_within": diff("agreement", "within_agreement"),
        "js": summ("js", False), "within_js": summ("within_js", False), "js_minus_within": diff("js", "within_js"),
        "by_context_kind": {k: {"agreement": summ(f"agreement.{k}"), "js": summ(f"js.{k}", False)} for k in kinds},
        "by_question_kind": {},
    }
    for qk in QUESTION_KINDS:
        ids = {it["id"] for it in its if it["kind"] == qk}
        if ids:
            summary["by_question_kind"][qk] = {
                name: stats.summarize([v for i, v in per[name].items() if i in ids], n_boot)
                for name in ("agreement", "within_agreement")}
    if correct:
        summary["reference_accuracy_factual"] = stats.summarize(list(correct.values()), n_boot)
    per_item = {f"cross_context.{k}": v for k, v in per.items() if v}
    return summary, per_item


def run_cross_context(model, tokenizer, its: list[dict], chat: bool, kinds=CONTEXT_KINDS, per_kind: int = 2,
                      rewordings=("synonym", "register", "typos"), seed: int = 0, batch_size: int = 16,
                      n_boot: int = stats.N_BOOT) -> tuple[dict, list[dict], dict]:
    """(summary, records, per_item) of the probe on a loaded model (module docstring)."""
    from coherentize.evaluate.capability import score_mc

    rows = build_rows(its, kinds, per_kind, rewordings, seed)
    n_choices = {it["id"]: len(it["choices"]) for it in its}
    scores = score_mc(model, tokenizer, [{"prompt": r.prompt, "n_choices": n_choices[r.item]} for r in rows], chat,
                      batch_size)
    letters, logps = scores["letter"], option_logprobs(scores["letter_logprobs"])
    summary, per_item = agreement_stats(its, rows, letters, logps, kinds, n_boot)
    n_ctx = sum(r.condition == "context" for r in rows)
    n_rew = sum(r.condition == "rewording" for r in rows)
    summary["format_mass"] = stats.summarize(scores["format_mass"], n_boot, rate=False)
    summary.update({"n_items": len(its), "contexts_per_item": n_ctx / max(1, len(its)),
                    "rewordings_per_item": n_rew / max(1, len(its)), "context_kinds": list(kinds),
                    "rewording_families": list(rewordings)})
    summary["notes"] = [
        "agreement: share of an item's contexts (test-split history, persona and task contexts) whose chosen letter "
        "equals the reference's (the question alone); within_agreement: the same for rewordings of the question in "
        "the empty context. js: mean JS divergence (nats) of the option distributions to the reference's. "
        "format_mass: probability of opening with any option letter (low: the choices are argmaxes among tails)."]
    if not chat:
        summary["notes"].append("Raw prompts: a context's messages are joined with the question by blank lines "
                                "(chat.render), without role labels.")
    texts = {it["id"]: it["question"] for it in its}
    ref_letter = {r.item: letters[i] for i, r in enumerate(rows) if r.condition == "reference"}
    records = [{"suite": "cross_context", "id": f"{r.item}:{r.condition}:{r.kind or 'none'}:{r.context or i}",
                "prompt_id": r.item, "family": r.kind or "reference", "label": f"chose {c}",
                "value": float(c == ref_letter[r.item]), "excerpt": texts[r.item][:120]}
               for i, (r, c) in enumerate(zip(rows, letters))]
    return summary, records, per_item
