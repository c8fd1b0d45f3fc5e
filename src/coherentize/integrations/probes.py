"""The items of each generation/scoring probe, built from an EvalConfig exactly as ``coherentize eval`` builds them,
so lm-evaluation-harness and inspect_ai see the same prompts (same split, sizes, template picked per request).

Every probe is a list of plain dicts (JSON-ready):
  direct_refusal   {"id", "prompt"}                                  harmful requests asked directly
  jailbreak_<fam>  {"id", "request_id", "family", "prompt"}          the same requests inside one template family
  overrefusal      {"id", "prompt", "source"}                        benign-but-edgy prompts
  sycophancy_plain / sycophancy_cued  {"id", "prompt", "answer", "cue", "n_choices"}   letters "A".."H"
Harmful request text lives only in what these functions return (and in files a user writes from them at run time),
never in this repository.
"""

from __future__ import annotations

import re

from coherentize.errors import CoherentizeError

PROBES = ("direct_refusal", "jailbreak", "overrefusal", "sycophancy")


def task_name(name: str) -> str:
    """A framework-safe task name: lower case, [a-z0-9_] only ('AIM' -> 'aim', 'dev mode' -> 'dev_mode')."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def probe_items(cfg=None, probes=PROBES) -> dict[str, list[dict]]:
    """{task: items} for the probes named (any of PROBES), sized and split by the EvalConfig cfg."""
    from coherentize.evaluate.suite import EvalConfig, harmful_requests, overrefusal_items, sycophancy_items, validate

    cfg = validate(cfg or EvalConfig())
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise CoherentizeError(f"unknown probe(s) {unknown}; choose from {', '.join(PROBES)}.")
    out: dict[str, list[dict]] = {}
    if "direct_refusal" in probes or "jailbreak" in probes:
        requests = harmful_requests(cfg)
        if "direct_refusal" in probes:
            out["direct_refusal"] = [{"id": r["id"], "prompt": r["prompt"]} for r in requests]
        if "jailbreak" in probes:
            out.update(jailbreak_items(requests, cfg))
    if "overrefusal" in probes:
        out["overrefusal"] = [{"id": it["id"], "prompt": it["prompt"], "source": it.get("source", "user")}
                              for it in overrefusal_items(cfg)]
    if "sycophancy" in probes:
        out.update(sycophancy_probe_items(sycophancy_items(cfg)))
    return out


def jailbreak_items(requests: list[dict], cfg) -> dict[str, list[dict]]:
    """{"jailbreak_<family>": items}: each request wrapped in the template the evaluation suite picks for it."""
    from coherentize.evaluate.jailbreak import template_families

    families = template_families(cfg.jailbreak_sources, cfg.jailbreak_families or None)
    out: dict[str, list[dict]] = {}
    for fam, family in families.items():
        name = f"jailbreak_{task_name(fam)}"
        if name in out:
            raise CoherentizeError(f"jailbreak families {fam!r} and another map to the same task name {name!r}.")
        out[name] = [{"id": f"{r['id']}:{fam}", "request_id": r["id"], "family": fam,
                      "prompt": family.wrap(r["prompt"], str(r["id"]))} for r in requests]
    return out


def sycophancy_probe_items(items: list[dict]) -> dict[str, list[dict]]:
    """The sycophancy items asked plainly and with the user-opinion cue (evaluate/sycophancy.py)."""
    from coherentize.evaluate.sycophancy import add_cue, cued_letter

    def row(it, prompt):
        return {"id": it["id"], "prompt": prompt, "answer": it["answer"], "cue": cued_letter(it),
                "n_choices": it["n_choices"]}

    return {"sycophancy_plain": [row(it, it["prompt"]) for it in items],
            "sycophancy_cued": [row(it, add_cue(it)) for it in items]}
