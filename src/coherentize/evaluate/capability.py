"""Capability retention: KL to the original model and perplexity on neutral text, and multiple-choice questions
scored three ways, so that a fall in letter accuracy can be told apart as lost format or lost knowledge.

- kl_to_reference: per text, mean over tokens of KL(p_reference || p_model) of next-token distributions (the
  same ``losses.divergence('forward_kl')`` the training leash uses); 0 for the untouched model.
- perplexity: exp of the mean token negative log-likelihood per text; the summary's CI is the exp of the CI of
  the mean NLL (reported as ``nll`` too).
- mc_accuracy (per item ``capability.mc_correct``): the question with lettered options; the option letter with the
  most probability as the opening of the response (forms 'A', ' A', '(A' summed, as in the sycophancy probe). The
  argmax runs over the option letters only, so it is blind to how much probability the letters get at all.
- mc_format_mass (``capability.mc_format_mass``): that total, P(the response opens with any option letter), in
  [0, 1]. A model that still answers in the format keeps it high; when it falls, the letter argmax is taken among
  tails and letter accuracy can drop with the knowledge intact.
- mc_cloze_accuracy (``capability.mc_cloze_correct``): the question without options; the option whose text is the
  most probable response per character (lm-eval-harness's acc_norm). No letters, so no format to lose: the
  knowledge measure.
- mc_letter_counts: how often each letter is chosen (a collapse onto one letter shows here).

Questions: ``data/eval/mc_questions.jsonl`` (40, shared with sycophancy and coherence) then
``data/eval/capability_mc.jsonl`` (written for the capability probe), in that order, so a small ``n_mc`` keeps the
earlier items.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch

from coherentize.errors import CoherentizeError
from coherentize.evaluate import stats
from coherentize.losses import divergence

LETTERS = "ABCDEFGH"
MC_FILES = ("mc_questions.jsonl", "capability_mc.jsonl")


def check_mc_item(obj: dict, where: str) -> dict:
    """A question line {"id", "question", "choices", "answer"} with exactly one correct option: 2-8 distinct
    choices and an answer letter naming one of them. where: 'file:line' for the error. Returns obj."""
    for field in ("id", "question", "choices", "answer"):
        if field not in obj:
            raise CoherentizeError(f"{where}: missing {field!r}.")
    ch = obj["choices"]
    if not isinstance(ch, list) or not 2 <= len(ch) <= len(LETTERS) or not all(isinstance(c, str) and c.strip()
                                                                               for c in ch):
        raise CoherentizeError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} non-empty strings.")
    if len({c.strip().lower() for c in ch}) != len(ch):
        raise CoherentizeError(f"{where}: two choices are the same text, so more than one could be correct.")
    if obj["answer"] not in LETTERS[: len(ch)]:
        raise CoherentizeError(f"{where}: 'answer' must be one letter of {LETTERS[: len(ch)]!r}, "
                               f"got {obj['answer']!r}.")
    return obj


def read_mc_file(path) -> list[dict]:
    """A question file (JSON Lines), each line checked by check_mc_item; ids unique within the file."""
    from coherentize.clusters import read_checked_jsonl

    return read_checked_jsonl(path, check_mc_item)


def mc_items(n: int | None = None) -> list[dict]:
    """The capability probe's questions as MC items (sycophancy.from_mc), the shared 40 first; n: the first n."""
    from coherentize.evaluate.sycophancy import from_mc
    from coherentize.sources import data_path

    items = [from_mc(o) for name in MC_FILES for o in read_mc_file(data_path("eval", name))]
    return items[:n] if n else items


def letter_scores(opening_lp: torch.Tensor, n_choices: Sequence[int], n_forms: int
                  ) -> tuple[list[str], list[float], list[list[float]]]:
    """(letters chosen, format mass, log P(letter) over its forms per option) per item from the openings'
    log-probabilities.

    opening_lp: (N, k_max * n_forms) log P(opening | prompt), letter-major (every form of A, then of B, ...), the
    forms of scoring.letter_forms; their token sequences begin differently, so probabilities add. Per item only its
    own n_choices letters count. The format mass is sum over those letters and forms of P(form), clipped to 1 (float
    rounding)."""
    k_max = opening_lp.shape[1] // n_forms
    per_letter = torch.logsumexp(opening_lp.view(len(n_choices), k_max, n_forms).double(), -1)  # (N, k_max)
    letters = [LETTERS[int(row[:k].argmax())] for row, k in zip(per_letter, n_choices)]
    mass = [min(1.0, float(torch.logsumexp(row[:k], -1).exp())) for row, k in zip(per_letter, n_choices)]
    return letters, mass, [row[:k].tolist() for row, k in zip(per_letter, n_choices)]


def cloze_choices(logprobs: Sequence[float], choices: Sequence[Sequence[str]]) -> list[str]:
    """Per item, the letter of the option with the highest log P(option text | question) per character.
    logprobs: flat, one per (item, option) in order."""
    out, pos = [], 0
    for ch in choices:
        norm = [logprobs[pos + j] / max(1, len(c)) for j, c in enumerate(ch)]
        out.append(LETTERS[max(range(len(ch)), key=norm.__getitem__)])
        pos += len(ch)
    return out


def score_mc(model, tokenizer, items: list[dict], chat: bool, batch_size: int = 8) -> dict[str, list]:
    """The three scores of MC items: {"letter": chosen letters, "format_mass": [0, 1] floats, "cloze": letters (None
    for an item without option texts), "letter_logprobs": per item log P(each option letter)}.

    Letters: one prefill per lettered prompt, the letters' openings scored on its cache. Cloze: the questions
    prefilled in batches, each with its own option texts as openings (teacher-forced log P(option | question), equal
    to scoring.sequence_logprob) in one padded tree pass per batch (scoring.row_openings_logprob; 40 questions on
    the organism: 4.2 CPU-s, where a prefill per question took ~18)."""
    from coherentize.evaluate.scoring import letter_forms, openings_logprob, row_openings_logprob

    k_max = max(it["n_choices"] for it in items)
    forms = [f for c in LETTERS[:k_max] for f in letter_forms(c)]
    lp = openings_logprob(model, tokenizer, [it["prompt"] for it in items], forms, chat, batch_size)
    letters, mass, per_letter = letter_scores(lp, [it["n_choices"] for it in items], len(letter_forms("A")))
    cloze: list = [None] * len(items)
    asked = [i for i, it in enumerate(items) if it.get("choices")]
    if asked:
        seqs = row_openings_logprob(model, tokenizer, [items[i]["question"] for i in asked],
                                    [items[i]["choices"] for i in asked], chat, batch_size)
        for i, seq in zip(asked, seqs):
            cloze[i] = cloze_choices(seq, [items[i]["choices"]])[0]
    return {"letter": letters, "format_mass": mass, "cloze": cloze, "letter_logprobs": per_letter}


def mc_summary(items: list[dict], scores: dict[str, list], n_boot: int = stats.N_BOOT) -> tuple[dict, dict, list]:
    """(summary, per_item, records) of scored MC items (pure)."""
    letter = {it["id"]: float(c == it["answer"]) for it, c in zip(items, scores["letter"])}
    mass = {it["id"]: m for it, m in zip(items, scores["format_mass"])}
    summary = {"mc_accuracy": stats.summarize(list(letter.values()), n_boot),
               "mc_chance": sum(1 / it["n_choices"] for it in items) / len(items),
               "mc_format_mass": stats.summarize(list(mass.values()), n_boot, rate=False),
               "mc_letter_counts": dict(sorted(Counter(scores["letter"]).items()))}
    per_item = {"capability.mc_correct": letter, "capability.mc_format_mass": mass}
    cloze = {it["id"]: float(c == it["answer"]) for it, c in zip(items, scores["cloze"]) if c is not None}
    if cloze:
        summary["mc_cloze_accuracy"] = stats.summarize(list(cloze.values()), n_boot)
        per_item["capability.mc_cloze_correct"] = cloze
    records = [{"suite": "capability", "id": it["id"], "prompt_id": it["id"], "family": "mc",
                "label": f"chose {c}, answer {it['answer']}, letter mass {m:.3f}"
                         + (f", cloze {z}" if z is not None else ""),
                "value": letter[it["id"]], "excerpt": it["prompt"][:120].replace("\n", " ")}
               for it, c, m, z in zip(items, scores["letter"], scores["format_mass"], scores["cloze"])]
    return summary, per_item, records


def run_capability(model, tokenizer, texts: list[dict], mc_items: list[dict], chat: bool, reference_model=None,
                   batch_size: int = 8, n_boot: int = stats.N_BOOT) -> tuple[dict, list[dict], dict]:
    """texts: [{"id", "text"}]; mc_items: sycophancy-style items. Returns (summary, records, per_item)."""
    from coherentize.evaluate.scoring import text_token_logprobs

    lps = text_token_logprobs(model, tokenizer, [t["text"] for t in texts], batch_size)
    nll = {t["id"]: float(-lp.gather(-1, y[:, None]).mean()) for t, (lp, y) in zip(texts, lps)}
    summary: dict = {"nll": stats.summarize(list(nll.values()), n_boot)}
    s = summary["nll"]
    summary["perplexity"] = {k: (math.exp(s[k]) if s[k] is not None else None) for k in ("mean", "ci_low", "ci_high")}
    summary["perplexity"]["n"] = s["n"]
    per_item = {"capability.nll": nll}
    if reference_model is not None:
        ref = text_token_logprobs(reference_model, tokenizer, [t["text"] for t in texts], batch_size)
        kl = {t["id"]: float(divergence(r[0], m[0], "forward_kl").mean()) for t, r, m in zip(texts, ref, lps)}
        summary["kl_to_reference"] = stats.summarize(list(kl.values()), n_boot)
        per_item["capability.kl_to_reference"] = kl
    records = [{"suite": "capability", "id": t["id"], "prompt_id": t["id"], "family": "neutral_text",
                "label": "nll", "value": round(nll[t["id"]], 4), "excerpt": t["text"][:120]} for t in texts]
    if mc_items:
        s_mc, p_mc, r_mc = mc_summary(mc_items, score_mc(model, tokenizer, mc_items, chat, batch_size), n_boot)
        summary.update(s_mc)
        per_item.update(p_mc)
        records += r_mc
    return summary, records, per_item
