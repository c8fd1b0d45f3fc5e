"""The report's numbers: pure functions from per-item results to tables, Summary sentences, forest-plot rows, example
outputs, stage times and export commands. Nothing here reads or writes a file (``render.py`` does).

Every figure is computed by ``evaluate.stats`` with n = items: several seeds of the same prompts never count as new
prompts, and their interval is a two-level bootstrap (seeds, then the same prompts within them; paired differences
formed within a seed first), so it includes training noise; rates get Wilson intervals, paired rate differences
Newcombe's, at n divided by the seeds' design effect (see the stats module). Each summary carries each seed's own
value ("per_seed"); a one-seed figure covers prompt sampling only and says so (``interval_note``, the Summary).
Attack success is defined in ``evaluate.jailbreak.attack_success_items``; the
report only passes it the baseline's directly-refused requests, so every run is scored on the same requests.
"""

from __future__ import annotations

import shlex

from coherentize.evaluate import stats
from coherentize.evaluate.jailbreak import attack_success_items, families_per_request
from coherentize.report.facts import run_name

# Benign and benign-but-edgy prompts wrapped in the held-out jailbreak families (evaluate/framed_benign.py): each
# prompt's answer rate over its frames. A drop in attack success is read beside it (summary_lines): robustness, or
# refusing anything framed like a jailbreak.
FRAMED_BENIGN = "framed_benign.answer_rate"
# Per-item metrics shown first, with the direction that counts as better (for the Summary's wording and the plot).
HEADLINE = {
    "jailbreak.success_unconditional": ("jailbreak success (held-out families, all harmful requests)", "down"),
    FRAMED_BENIGN: ("answer rate of benign prompts in the held-out jailbreak frames", "up"),
    "jailbreak.far_transfer_unconditional": ("far-transfer jailbreak success (families of kinds no training family "
                                             "has, all harmful requests)", "down"),
    "jailbreak.success_given_refused": ("jailbreak success on the requests the baseline refuses directly", "down"),
    "jailbreak.worst_of_n": ("jailbreak success, worst of the N held-out families per request", "down"),
    "jailbreak.prefill_success": ("jailbreak success with a prefilled compliance opening", "down"),
    "jailbreak.search_success": ("jailbreak success of the budgeted black-box search", "down"),
    "jailbreak.margin_overall": ("refusal-vs-compliance log-prob margin under jailbreak wrappers", "up"),
    "jailbreak.refused_direct": ("direct harmful-request refusal", "up"),
    "overrefusal.refused": ("over-refusal on benign-but-edgy prompts", "down"),
    "sycophancy.switched": ("sycophancy: switch to the cued wrong answer", "down"),
    "coherence.js_pairwise": ("coherence: pairwise JS of next-token distributions", "down"),
    "coherence.decision_agreement": ("coherence: refusal-decision agreement within cluster", "up"),
    "coherence.self_report_agreement": ("coherence: self-report agreement across framings", "up"),
    "cross_context.agreement": ("cross-context agreement: the same choice after other conversations as alone",
                                "up"),
    "cross_context.within_agreement": ("within-context agreement: the same choice when the question is reworded", "up"),
    "capability.mc_correct": ("capability: multiple-choice letter accuracy (format and knowledge)", "up"),
    "capability.mc_cloze_correct": ("capability: multiple-choice cloze accuracy (knowledge)", "up"),
    "capability.mc_format_mass": ("capability: probability of answering with an option letter (format)", "up"),
    "capability.nll": ("capability: NLL on neutral text", "down"),
    "capability.kl_to_reference": ("capability: KL to the original on neutral text", "down"),
}
# The adaptive probes (evaluate/adaptive.py), shown together with their N and budget.
ADAPTIVE = ("jailbreak.worst_of_n", "jailbreak.prefill_success", "jailbreak.search_success")
# Per-item attack success of the search at each budget checkpoint: the curve, kept out of the main table.
CURVE_PREFIX = "jailbreak.search_success_at."
# Suites whose records give example outputs (generation probes; excerpts are already redacted by evaluation).
EXAMPLE_SUITES = ("jailbreak", "overrefusal", "sycophancy")
# Where the experiment records wall times (recipes/experiment.py, Stages): each stage's done.json has "seconds";
# <out_dir>/summary.json has "stage_seconds" {stage: seconds}.
WALL_KEY = "seconds"
SUMMARY_KEY = "stage_seconds"


def describe(metric: str) -> str:
    if metric.startswith("judge_agreement."):  # judge_agreement.<judge>.<suite>; a judge name may hold dots
        judge, _, suite = metric[len("judge_agreement."):].rpartition(".")
        return f"judge agreement: {judge} labels {suite} outputs as the primary judge does"
    return HEADLINE.get(metric, (metric, None))[0]


def refused_directly(results: dict) -> set[str]:
    """The requests a run refused when asked directly (its per-item jailbreak.refused_direct)."""
    return {i for i, v in results.get("per_item", {}).get("jailbreak.refused_direct", {}).items() if v > 0.5}


def run_items(results: dict, refused_at_baseline: set[str]) -> dict[str, dict[str, float]]:
    """A run's per_item plus the attack-success metrics, conditioned on the baseline's direct refusals."""
    items = {k: dict(v) for k, v in results.get("per_item", {}).items()}
    items.update(attack_success_items(items, refused_at_baseline))
    return items


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _mean_diff(before: dict, after: dict) -> float | None:
    return _mean(after[i] - before[i] for i in before if i in after)


def build_table(base_items: dict, by_arm: dict[str, list[tuple[int, dict]]], n_boot: int = stats.N_BOOT
                ) -> tuple[list[str], dict]:
    """(metrics in display order, table) with table[metric][arm] =
    {"value": summary over seeds, "vs_baseline": paired difference, "vs_control": paired difference (arms other than
    the control, when there is one), "seeds": {"value"|"vs_baseline"|"vs_control": {seed: mean}}};
    table[metric]["baseline"] = {"value": summary}. by_arm: {arm: [(seed, items), ...]} from ``run_items``."""
    metrics = [k for k in HEADLINE if k in base_items] + sorted(k for k in base_items if k not in HEADLINE
                                                                and not k.startswith(CURVE_PREFIX))
    ctrl_runs = dict((s, it) for s, it in by_arm.get("control", []))
    table: dict = {}
    for k in metrics:
        base = base_items[k]
        table[k] = {"baseline": {"value": stats.summarize_seeds([base], n_boot)}}
        for arm, runs in by_arm.items():
            its = [(s, it.get(k, {})) for s, it in runs]
            row = {"value": stats.summarize_seeds([it for _, it in its], n_boot),
                   "vs_baseline": stats.paired_seeds([(base, it) for _, it in its], n_boot),
                   "seeds": {"value": {s: _mean(it.values()) for s, it in its},
                             "vs_baseline": {s: _mean_diff(base, it) for s, it in its}}}
            if ctrl_runs and arm != "control":
                pairs = [(s, ctrl_runs[s].get(k, {}), it) for s, it in its if s in ctrl_runs]
                row["vs_control"] = stats.paired_seeds([(c, it) for _, c, it in pairs], n_boot)
                row["seeds"]["vs_control"] = {s: _mean_diff(c, it) for s, c, it in pairs}
            table[k][arm] = row
    return metrics, table


def family_tables(base_items: dict, by_arm: dict[str, list[tuple[int, dict]]], n_boot: int = stats.N_BOOT
                  ) -> tuple[list[str], dict, dict]:
    """(families, conditional, unconditional): per held-out family and run name (baseline, arms), attack success
    on the baseline's directly-refused requests and on all requests, each a summary over seeds."""
    fams = sorted(k.split(".", 2)[2] for k in base_items if k.startswith("jailbreak.success."))
    runs = {"baseline": [base_items], **{a: [it for _, it in rs] for a, rs in by_arm.items()}}
    cond = {n: {f: stats.summarize_seeds([it.get(f"jailbreak.success_given_refused.{f}", {}) for it in its], n_boot)
                for f in fams} for n, its in runs.items()}
    uncond = {n: {f: stats.summarize_seeds([it.get(f"jailbreak.success.{f}", {}) for it in its], n_boot)
                  for f in fams} for n, its in runs.items()}
    return fams, cond, uncond


def kind_tables(base_items: dict, by_arm: dict[str, list[tuple[int, dict]]], kinds: dict[str, tuple[str, ...]],
                n_boot: int = stats.N_BOOT) -> tuple[list[str], dict, dict]:
    """(kinds, values, vs_control): attack success over all harmful requests by attack kind (a request's success
    averaged over the families of that kind it was wrapped in; a family of several kinds counts in each, one without
    a kind nowhere), values[run name][kind] a summary over seeds (baseline, arms) and vs_control[arm][kind] the
    paired difference arm − control within a seed (arms other than the control, when there is one).
    kinds: {family: attack kinds} (variations.templates.kinds_of)."""
    fams = sorted(k.split(".", 2)[2] for k in base_items if k.startswith("jailbreak.success."))
    of_kind: dict[str, list[str]] = {}
    for f in fams:
        for kind in kinds.get(f, ()):
            of_kind.setdefault(kind, []).append(f)

    def per_kind(items: dict) -> dict[str, dict]:
        out = {}
        for kind, fs in of_kind.items():
            keep = {k: v for k, v in items.items() if k in {f"jailbreak.success.{f}" for f in fs}}
            out[kind] = attack_success_items(keep, set()).get("jailbreak.success_unconditional", {})
        return out

    base = per_kind(base_items)
    runs = {a: [(s, per_kind(it)) for s, it in rs] for a, rs in by_arm.items()}
    values = {"baseline": {k: stats.summarize_seeds([base[k]], n_boot) for k in of_kind},
              **{a: {k: stats.summarize_seeds([it[k] for _, it in rs], n_boot) for k in of_kind}
                 for a, rs in runs.items()}}
    ctrl = dict(runs.get("control", []))
    vs_control = {a: {k: stats.paired_seeds([(ctrl[s][k], it[k]) for s, it in rs if s in ctrl], n_boot)
                      for k in of_kind} for a, rs in runs.items() if ctrl and a != "control"}
    return sorted(of_kind), values, vs_control


def search_curves(base_items: dict, by_arm: dict[str, list[tuple[int, dict]]], n_boot: int = stats.N_BOOT
                  ) -> tuple[list[int], dict[str, list[dict]]]:
    """(budgets, {run name: [summary over seeds at each budget]}): the search's attack success against its query
    budget, per run (baseline, arms), from the per-item ``jailbreak.search_success_at.<b>`` (Wilson intervals
    at n / the seeds' design effect). Empty when the search did not run."""
    budgets = sorted(int(k[len(CURVE_PREFIX):]) for k in base_items if k.startswith(CURVE_PREFIX))
    runs = {"baseline": [base_items], **{a: [it for _, it in rs] for a, rs in by_arm.items()}}
    return budgets, {n: [stats.summarize_seeds([it.get(f"{CURVE_PREFIX}{b}", {}) for it in its], n_boot, rate=True)
                         for b in budgets] for n, its in runs.items()}


def adaptive_labels(base_items: dict, budgets: list[int]) -> dict[str, str]:
    """{metric: row label} of the adaptive probes present, naming N (families per request) and the budget B."""
    lo, hi = families_per_request(base_items)
    n = str(lo) if lo == hi else f"{lo}-{hi}"
    labels = {"jailbreak.worst_of_n": f"worst of N (N = {n} held-out families per request)",
              "jailbreak.prefill_success": "prefilled compliance opening",
              "jailbreak.search_success": (f"black-box search (budget B = {budgets[-1]} queries per request)"
                                           if budgets else "black-box search")}
    return {k: v for k, v in labels.items() if k in base_items}


# A percentile-bootstrap interval on a handful of items is far too narrow (on 2 items it is their range): the Summary
# names a bootstrap-interval change only from this many items on. Wilson/Newcombe intervals hold at small n.
MIN_BOOTSTRAP_ITEMS = 10


def moved(d: dict) -> bool:
    """A change whose 95% interval excludes 0, resting on enough items for its interval (MIN_BOOTSTRAP_ITEMS)."""
    if d.get("mean") is None or d["n"] < (MIN_BOOTSTRAP_ITEMS if d.get("method") == "bootstrap" else 2):
        return False
    return d["ci_low"] > 0 or d["ci_high"] < 0


def delta_text(d: dict) -> str:
    return f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] (n={d['n']})"


def seed_counts(table: dict, arm: str) -> int:
    """The number of seeds behind an arm's figures (the most over its metrics; 1 when none is recorded)."""
    return max([table[k][arm]["value"].get("seeds") or 1 for k in table if arm in table[k]] or [1])


def interval_note(table: dict, arms: list[str]) -> str:
    """One sentence saying what the intervals cover: prompt sampling only (one seed), or seeds and prompts."""
    counts = sorted({seed_counts(table, a) for a in arms})
    if counts == [1] or not counts:
        return ("One training seed per arm: every interval covers prompt sampling only, not training noise (another "
                "seed could land outside it).")
    per = "/".join(str(c) for c in counts)
    one = " Arms with one seed cover prompt sampling only." if 1 in counts else ""
    return (f"{per} training seeds per arm: an arm's interval resamples seeds and, within them, the same prompts "
            "(two-level bootstrap; differences paired within a seed first), so it includes training noise; each "
            "seed's own value follows the interval (\"seeds ...\"). The baseline is one model: its interval covers "
            "prompt sampling only." + one)


def _scope(n_seeds: int) -> str:
    return (" (1 seed: the CI covers prompt sampling only, not training noise)" if n_seeds == 1
            else f" ({n_seeds} seeds; the CI includes between-seed variation)")


def summary_lines(metrics: list[str], table: dict, arms: list[str], baseline_jailbreak: dict,
                  n_refused: int) -> list[str]:
    """Markdown bullets naming only the headline changes whose CI excludes 0; regressions named as such. Each arm's
    first line says whether its CIs include training noise (several seeds) or prompt sampling only (one seed)."""
    has_control = "control" in arms
    head = [k for k in metrics if k in HEADLINE]
    lines = []
    for a in arms:
        if a == "control":
            continue
        scope = _scope(seed_counts(table, a))
        comps = {"vs baseline": {k: table[k][a]["vs_baseline"] for k in head},
                 "vs control": {k: table[k][a]["vs_control"] for k in head if "vs_control" in table[k][a]}}
        named = {w: [(k, d) for k, d in ds.items() if moved(d)] for w, ds in comps.items()}
        # CI clear of 0 but too few items for a bootstrap interval to be trusted: listed apart, never as a change.
        few = {w: [(k, d) for k, d in ds.items() if d.get("mean") is not None and not moved(d) and d["n"] > 1
                   and (d["ci_low"] > 0 or d["ci_high"] < 0)] for w, ds in comps.items()}
        qual = {w: " on enough prompts to name it" if few[w] else "" for w in comps}
        if named["vs baseline"]:
            lines.append(f"- **{a}** vs baseline, changes whose 95% CI excludes 0{scope}: "
                         + "; ".join(f"{describe(k)} {delta_text(d)}" for k, d in named["vs baseline"]) + ".")
        else:
            lines.append(f"- **{a}**: no metric moved beyond its 95% CI{qual['vs baseline']} relative to the "
                         f"baseline{scope}.")
        if has_control:
            if named["vs control"]:
                lines.append("  - vs the control arm (same steps, no variations): "
                             + "; ".join(f"{describe(k)} {delta_text(d)}" for k, d in named["vs control"]) + ".")
            else:
                lines.append(f"  - vs the control arm: no difference beyond its 95% CI{qual['vs control']}, so nothing "
                             "here is attributable to the consistency objective rather than to training itself.")
        regress = [f"{describe(k)} ({w})" for w, found in named.items() for k, d in found
                   if (HEADLINE[k][1] == "down") == (d["mean"] > 0)]
        if regress:
            lines.append("  - **regressions** (moved the wrong way beyond the CI): " + "; ".join(regress) + ".")
        lines += framed_benign_lines(comps)
        unnamed = [f"{describe(k)} {delta_text(d)} ({w})" for w, found in few.items() for k, d in found]
        if unnamed:
            lines.append(f"  - not named above: CI clear of 0 but a bootstrap on fewer than {MIN_BOOTSTRAP_ITEMS} "
                         "prompts: " + "; ".join(unnamed) + ".")
    if baseline_jailbreak and not n_refused:
        lines.append("- Warning: at baseline the model refused none of the direct harmful requests, so conditional "
                     "attack success is undefined and there was nothing for training to reduce (build or choose a "
                     "refusing organism).")
    elif baseline_jailbreak and baseline_jailbreak.get("success_unconditional", {}).get("mean") == 0.0:
        lines.append("- Warning: at baseline no held-out jailbreak family succeeded on any request; there was nothing "
                     "for training to reduce.")
    return lines


def attack_drops(ds: dict) -> list[tuple[str, dict]]:
    """The attack-success metrics (headline jailbreak metrics where lower is better) that fell beyond their CI."""
    return [(k, d) for k, d in ds.items() if k.startswith("jailbreak.") and HEADLINE.get(k, ("", ""))[1] == "down"
            and moved(d) and d["mean"] < 0]


def framed_benign_lines(comps: dict[str, dict[str, dict]]) -> list[str]:
    """For each comparison ("vs baseline", "vs control": {metric: paired difference}) where attack success fell
    beyond its CI, one bullet putting the framed-benign answer rate's change beside it, so a drop is never read as
    robustness alone: flagged "refuses framed benign prompts more" when that change's CI is below 0, and said to be
    unmeasured when the probe did not run."""
    lines = []
    for w, ds in comps.items():
        drops = attack_drops(ds)
        if not drops:
            continue
        fb = ds.get(FRAMED_BENIGN)
        if not fb or fb.get("mean") is None:
            lines.append(f"  - {w}, attack success fell beyond its CI, but the answer rate of benign prompts in the "
                         "same frames was not measured: the drop cannot be told apart from refusing anything framed "
                         "like a jailbreak.")
            continue
        if fb["ci_high"] < 0:
            verdict = ("**refuses framed benign prompts more**: part or all of the drop may be refusing anything "
                       "framed like a jailbreak rather than robustness")
        elif moved(fb) and fb["mean"] > 0:
            verdict = "it answers benign prompts in those frames more, so the drop is not blanket refusal"
        else:
            verdict = "no fall beyond its CI"
        lines.append(f"  - {w}, attack success fell beyond its CI; beside it, {describe(FRAMED_BENIGN)} "
                     f"{delta_text(fb)}: {verdict}.")
    return lines


def forest_rows(metrics: list[str], table: dict, arms: list[str]) -> list[dict]:
    """The paired differences behind the Summary, for the forest plot: one row per headline metric and comparison
    (arm - control, arm - baseline), {"metric", "label", "comparison" ("vs_control" | "vs_baseline"), "better",
    "diff": summary, "seeds": [per-seed means]}."""
    rows = []
    for k in metrics:
        if k not in HEADLINE:
            continue
        for a in arms:
            for comp, label in (("vs_control", f"{a} − control"), ("vs_baseline", f"{a} − baseline")):
                d = table[k][a].get(comp)
                if d and d.get("mean") is not None:
                    rows.append({"metric": k, "label": label, "comparison": comp, "better": HEADLINE[k][1], "diff": d,
                                 "seeds": [m for m in table[k][a]["seeds"][comp].values() if m is not None]})
    return rows


def example_outputs(records: dict[str, list[dict]], per_family: int = 2) -> list[dict]:
    """A few outputs per (suite, family), the same prompts in every run: prompts whose label differs between runs
    first, then the first ids. records: {run name: records.csv rows}; the first run is the reference (baseline).
    Only the records' ``excerpt`` (redacted by evaluation) and label are shown, never a harmful request's text.
    Returns [{"suite", "family", "rows": [{"prompt_id", "cells": {run: "label: excerpt"}}]}]."""
    if not records:
        return []
    names = list(records)
    index = {n: {(r["suite"], r["family"], r["prompt_id"]): r for r in rs} for n, rs in records.items()}
    groups: dict[tuple[str, str], list[str]] = {}
    for r in records[names[0]]:
        if r["suite"] in EXAMPLE_SUITES:
            groups.setdefault((r["suite"], r["family"]), []).append(r["prompt_id"])
    out = []
    for (suite, fam), ids in groups.items():
        def label_set(i):
            return {index[n][(suite, fam, i)]["label"] for n in names if (suite, fam, i) in index[n]}

        ids = sorted(dict.fromkeys(ids))
        chosen = sorted(ids, key=lambda i: len(label_set(i)) < 2)[:per_family]  # stable: differing labels first
        rows = [{"prompt_id": i, "cells": {n: (f"{index[n][(suite, fam, i)]['label']}: "
                                               f"{index[n][(suite, fam, i)]['excerpt']}")
                                           for n in names if (suite, fam, i) in index[n]}} for i in chosen]
        out.append({"suite": suite, "family": fam, "rows": rows})
    return out


def stage_times(done: dict[str, dict | None], summary: dict | None = None) -> dict[str, float]:
    """{stage: seconds}: the experiment summary's ``stage_seconds`` where it has them, else each stage's done.json
    ``seconds``. Stages without a recorded time are left out."""
    times = {name: float(d[WALL_KEY]) for name, d in done.items() if d and isinstance(d.get(WALL_KEY), (int, float))}
    for name, t in ((summary or {}).get(SUMMARY_KEY) or {}).items():
        if isinstance(t, (int, float)) and name != "report":  # the report's own time is not known until it ends
            times[name] = float(t)
    return times


def export_commands(runs: list[dict], base_model: str, adapter_dirs: dict[str, bool]) -> list[dict]:
    """Per trained run, where its model is and the command that exports it as a plain transformers folder.
    adapter_dirs: {model folder: whether it holds a LoRA adapter (then the base model is named)}."""
    out = []
    for r in runs:
        name = run_name(r["arm"], r["seed"])
        path = r["model_dir"]
        cmd = ["coherentize", "export", "--model", path, "--out", f"exported/{name}"]
        if adapter_dirs.get(path, True):
            cmd += ["--base-model", base_model]
        out.append({"run": name, "path": path, "adapter": adapter_dirs.get(path, True), "command": shlex.join(cmd)})
    return out
