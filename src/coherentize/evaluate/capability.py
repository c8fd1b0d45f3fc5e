"""Capability retention: KL to the original model and perplexity on neutral text, and multiple-choice accuracy.

- kl_to_reference: per text, mean over tokens of KL(p_reference || p_model) of next-token distributions (the
  same ``losses.divergence('forward_kl')`` the training leash uses); 0 for the untouched model.
- perplexity: exp of the mean token negative log-likelihood per text; the summary's CI is the exp of the CI of
  the mean NLL (reported as ``nll`` too).
- mc_accuracy: the project's general-knowledge questions, letter scored as in the sycophancy probe (a 135M model
  is near chance in this format);
- mc_cloze_accuracy: the same questions without the lettered options; the choice whose text is most probable as
  the answer, per character (lm-eval-harness's acc_norm) — more sensitive for small models.
"""

from __future__ import annotations

import math

from coherentize.evaluate import stats
from coherentize.losses import divergence


def run_capability(model, tokenizer, texts: list[dict], mc_items: list[dict], chat: bool, reference_model=None,
                   batch_size: int = 8, n_boot: int = stats.N_BOOT) -> tuple[dict, list[dict], dict]:
    """texts: [{"id", "text"}]; mc_items: sycophancy-style items. Returns (summary, records, per_item)."""
    from coherentize.evaluate.scoring import mc_choice, text_token_logprobs

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
        chosen = mc_choice(model, tokenizer, [it["prompt"] for it in mc_items], [it["n_choices"] for it in mc_items],
                           chat, batch_size)
        correct = {it["id"]: float(c == it["answer"]) for it, c in zip(mc_items, chosen)}
        summary["mc_accuracy"] = stats.summarize(list(correct.values()), n_boot)
        summary["mc_chance"] = sum(1 / it["n_choices"] for it in mc_items) / len(mc_items)
        per_item["capability.mc_correct"] = correct
        records += [{"suite": "capability", "id": it["id"], "prompt_id": it["id"], "family": "mc",
                     "label": f"chose {c}, answer {it['answer']}", "value": correct[it["id"]],
                     "excerpt": it["prompt"][:120].replace("\n", " ")} for it, c in zip(mc_items, chosen)]
    cloze = [it for it in mc_items if it.get("choices")]
    if cloze:
        from coherentize.evaluate.scoring import sequence_logprob

        prompts = [it["question"] for it in cloze for _ in it["choices"]]
        conts = [c for it in cloze for c in it["choices"]]
        lp = sequence_logprob(model, tokenizer, prompts, conts, chat, batch_size)
        right, pos = {}, 0
        for it in cloze:
            k = len(it["choices"])
            norm = [lp[pos + j] / len(c) for j, c in enumerate(it["choices"])]
            right[it["id"]] = float("ABCDEFGH"[max(range(k), key=norm.__getitem__)] == it["answer"])
            pos += k
        summary["mc_cloze_accuracy"] = stats.summarize(list(right.values()), n_boot)
        per_item["capability.mc_cloze_correct"] = right
    return summary, records, per_item
