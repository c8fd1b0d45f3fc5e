"""Rendering one experiment's report: report.md, a self-contained report.html (plots embedded), the PNGs beside them
and report.json (every figure of the tables). The numbers come from ``tables`` (pure); this module reads the stage
folders and writes files. Stage times come from the experiment's summary.json (``stage_seconds``) or, failing that,
each stage's done.json (``seconds``); the report never writes summary.json (the experiment owns it).
"""

from __future__ import annotations

import base64
import io
import json
import textwrap
import time
from pathlib import Path

import numpy as np

from coherentize.evaluate import stats
from coherentize.io import csv_rows
from coherentize.report import data as report_data
from coherentize.report import tables
from coherentize.report.facts import ExperimentFacts, RunRecord, run_name
from coherentize.report.tables import HEADLINE, describe

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;font-size:14px}"
         "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
         "img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}"
         "code{background:#f3f3f3;padding:0 2px}blockquote{color:#555;border-left:3px solid #ccc;margin-left:0;"
         "padding-left:1em}")


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _records(eval_dir: Path) -> list[dict]:
    """An evaluation's records.csv (evaluate/results.py's RECORD_FIELDS) as rows; none when it has none."""
    from coherentize.evaluate.results import RECORD_FIELDS

    path = Path(eval_dir) / "records.csv"
    return [r for _, r in csv_rows(path, RECORD_FIELDS)] if path.is_file() else []


def md_text(text: str) -> str:
    """Text safe inside a Markdown paragraph or table cell: every Markdown character backslash-escaped."""
    text = " ".join(str(text).split())
    return "".join("\\" + ch if ch in "\\`*_{}[]()<>#+-.!|~" else ch for ch in text)


# ---- plots


def _fig_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _err(s):
    if not s or s.get("mean") is None:
        return 0.0, [[0.0], [0.0]]
    return s["mean"], [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]


def _seed_dots(ax, x: float, s: dict | None) -> None:
    """Each seed's own value of a summary from several seeds, as small open dots on the bar at x."""
    per_seed = [v for v in (s or {}).get("per_seed") or [] if v is not None]
    if len(per_seed) > 1:
        ax.plot([x] * len(per_seed), per_seed, "o", mfc="none", color="0.15", ms=3, zorder=3)


def forest_plot(rows: list[dict], colors: dict):
    """One panel per headline metric: each paired difference (arm − control, arm − baseline) with its 95% CI, and
    each seed's own mean difference as a small open dot above its row (several seeds only)."""
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(r["metric"] for r in rows))
    ncol = min(3, len(keys))
    nrow = -(-len(keys) // ncol)
    per = max(len([r for r in rows if r["metric"] == k]) for k in keys)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, (0.42 * per + 1.3) * nrow), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, keys):
        mine = [r for r in rows if r["metric"] == k]
        for y, r in enumerate(reversed(mine)):
            d = r["diff"]
            color = colors.get(r["label"].split(" − ")[0], "C0")
            ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]],
                        fmt="o" if r["comparison"] == "vs_control" else "s", color=color, capsize=3, ms=5)
            if len(r["seeds"]) > 1:
                ax.plot(r["seeds"], [y + 0.25] * len(r["seeds"]), "o", mfc="none", color=color, ms=4, alpha=0.9)
        ax.axvline(0, color="0.4", lw=0.8, ls="--")
        ax.set_yticks(range(len(mine)), [f"{r['label']} (n={r['diff']['n']})" for r in reversed(mine)], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        arrow = "lower is better" if HEADLINE[k][1] == "down" else "higher is better"
        ax.set_title(textwrap.fill(f"{describe(k)} ({arrow})", 46), fontsize=7)
    fig.suptitle("Paired differences with 95% CI (● vs control, ■ vs baseline; open dots above a row: each seed's "
                 "own difference)", fontsize=9)
    fig.tight_layout()
    return fig


def make_plots(table: dict, arms: list[str], families: dict, train_logs: dict, per_layer: dict,
               forest: list[dict], out: Path, curves: tuple[list[int], dict] | None = None) -> dict:
    """Write the PNGs into out; return {file name: base64 PNG} (forest.png first). curves: the search's attack
    success against its budget (tables.search_curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    names = ["baseline"] + arms
    colors = {name: f"C{i}" for i, name in enumerate(names)}

    if forest:
        plots["forest.png"] = _fig_png(forest_plot(forest, colors))

    # before/after per headline metric per arm
    keys = [k for k in HEADLINE if k in table and any(table[k][n]["value"].get("mean") is not None for n in names)]
    if keys:
        ncol = min(4, len(keys))
        nrow = -(-len(keys) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.3 * nrow), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.axis("off")
        for ax, k in zip(axes.flat, keys):
            for j, name in enumerate(names):
                m, e = _err(table[k][name]["value"])
                ax.bar(j, m, yerr=e, color=colors[name], capsize=3)
                _seed_dots(ax, j, table[k][name]["value"])
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
            ax.set_title(textwrap.fill(describe(k), 38), fontsize=7)
        fig.suptitle("Before / after per metric (95% CI; open dots: each seed's own value)", fontsize=9)
        fig.tight_layout()
        plots["metrics.png"] = _fig_png(fig)

    # jailbreak success per family
    if families:
        fams = sorted(next(iter(families.values())))
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(fams)), 3.2))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            ms, lo, hi = [], [], []
            for f in fams:
                m, e = _err(families[name].get(f))
                ms.append(m)
                lo.append(e[0][0])
                hi.append(e[1][0])
            ax.bar(np.arange(len(fams)) + j * width, ms, width, yerr=[lo, hi], label=name, color=colors[name],
                   capsize=2)
            for i, f in enumerate(fams):
                _seed_dots(ax, i + j * width, families[name].get(f))
        ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("attack success (all requests)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
        ax.set_title("Jailbreak success per held-out family", fontsize=9)
        plots["jailbreak_families.png"] = _fig_png(fig)

    # the black-box search: attack success against the query budget, every run on one plot
    if curves and curves[0]:
        budgets, runs = curves
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for j, (name, pts) in enumerate(runs.items()):
            xs = [b * (1 + 0.04 * (j - (len(runs) - 1) / 2)) for b in budgets]  # a little apart, bars visible
            ms = [p["mean"] if p.get("mean") is not None else np.nan for p in pts]
            lo = [m - p["ci_low"] if p.get("mean") is not None else 0 for m, p in zip(ms, pts)]
            hi = [p["ci_high"] - m if p.get("mean") is not None else 0 for m, p in zip(ms, pts)]
            ax.errorbar(xs, ms, yerr=[lo, hi], marker="o", ms=4, capsize=2, label=name,
                        color=colors.get(name, f"C{j}"))
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("queries per request (budget)")
        ax.set_ylabel("attack success (all requests)")
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=7)
        ax.set_title("Black-box search: success vs budget (95% Wilson CI)", fontsize=9)
        plots["jailbreak_search.png"] = _fig_png(fig)

    # jailbreak success against refusing benign prompts: plain (over-refusal) and in the same held-out jailbreak
    # frames (framed benign: a drop in attack success with a drop in framed answers is refusing the frame)
    panels = [(k, label) for k, label in (("overrefusal.refused", "over-refusal rate (benign-edgy)"),
                                          (tables.FRAMED_BENIGN, "refusal of benign prompts in jailbreak frames"))
              if k in table]
    if panels and "jailbreak.success_unconditional" in table:
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            for name in names:
                s = table[key][name]["value"]
                if key == tables.FRAMED_BENIGN and s and s.get("mean") is not None:  # answer rate -> refusal rate
                    s = {"mean": 1 - s["mean"], "ci_low": 1 - s["ci_high"], "ci_high": 1 - s["ci_low"]}
                x, xe = _err(s)
                y, ye = _err(table["jailbreak.success_unconditional"][name]["value"])
                ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=colors[name], label=name, capsize=3)
            ax.set_xlabel(label)
            ax.set_ylabel("jailbreak success (all requests)")
            ax.legend(fontsize=7)
            ax.set_title("Trade-off: lower-left is better", fontsize=9)
        plots["tradeoff.png"] = _fig_png(fig)

    # training curves per loss component
    comps = sorted({k for logs in train_logs.values() for h in logs for k in h
                    if k.startswith("loss/") and "/layer" not in k})
    if comps:
        fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps), 3), squeeze=False)
        for ax, c in zip(axes[0], comps):
            for run, logs in train_logs.items():
                pts = [(h["step"], h[c]) for h in logs if c in h]
                if pts:
                    ax.plot(*zip(*pts), label=run, color=colors.get(run.rsplit("-seed", 1)[0]), alpha=0.8)
            ax.set_title(c, fontsize=8)
            ax.set_xlabel("step", fontsize=7)
        handles = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels())}
        fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower center", ncol=4,
                   bbox_to_anchor=(0.5, -0.08))
        plots["training.png"] = _fig_png(fig)

    # activation separation per layer
    if any(per_layer.values()):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for name, layers in per_layer.items():
            if layers:
                ax.plot([d["layer"] for d in layers], [d["separation"] for d in layers], marker=".",
                        label=name, color=colors.get(name.rsplit("-seed", 1)[0]))
        ax.set_xlabel("layer")
        ax.set_ylabel("within - between cluster cosine")
        ax.legend(fontsize=7)
        ax.set_title("Activation separation per layer (last prompt token)", fontsize=9)
        plots["activation_layers.png"] = _fig_png(fig)

    for name, b64 in plots.items():
        (out / name).write_bytes(base64.b64decode(b64))
    return plots


# ---- Markdown and HTML


def _cell(s: dict | None, pct: bool = False) -> str:
    """A summary as 'mean [low, high] (n=..)', followed by each seed's own value when it comes from several."""
    if not s:
        return "n/a"
    text = stats.fmt(s, pct=pct)
    per_seed = [v for v in s.get("per_seed") or [] if v is not None]
    if s.get("mean") is not None and len(per_seed) > 1:
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        text += "; seeds " + ", ".join(f(v) for v in per_seed)
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def results_table(metrics: list[str], table: dict, arms: list[str]) -> list[str]:
    """The main table's Markdown: every metric for the baseline and each arm, with the paired differences vs the
    baseline and vs the control, and each seed's value beside a figure from several seeds."""
    has_control = "control" in arms
    header = ["metric", "baseline"]
    for a in arms:
        header += [a, f"Δ {a} vs baseline"] + ([f"Δ {a} vs control"] if has_control and a != "control" else [])
    rows = []
    for k in metrics:
        row = [md_text(describe(k)), _cell(table[k]["baseline"]["value"])]
        for a in arms:
            row += [_cell(table[k][a]["value"]), _cell(table[k][a]["vs_baseline"])]
            if has_control and a != "control":
                row.append(_cell(table[k][a].get("vs_control")))
        rows.append(row)
    return _table(header, rows)


def family_table(fams: list[str], cond: dict, uncond: dict, names: list[str], n_requests: int,
                 n_refused: int) -> list[str]:
    """Attack success per held-out family (tables.family_tables), all requests and the baseline-refused ones."""
    return ([f"Over all {n_requests} harmful requests (the headline, unconditional), and beside it on the "
             f"{n_refused} the baseline refused when asked directly (conditional).\n"]
            + _table(["family"] + [f"{n}: {w}" for n in names for w in ("all requests", "baseline-refused")],
                     [[md_text(f)] + [c for n in names for c in (_cell(uncond[n][f], True), _cell(cond[n][f], True))]
                      for f in fams]))


def family_kinds(sources) -> dict[str, tuple[str, ...]]:
    """{family: attack kinds} of the jailbreak sources' families and the built-in variation families (an unknown
    source gives no kinds rather than an error: the report is written after the evaluation read them)."""
    from coherentize.errors import CoherentizeError
    from coherentize.variations.families import TEMPLATE_FAMILIES
    from coherentize.variations.templates import kinds_of, template_families

    try:
        found = template_families(list(sources))
    except (CoherentizeError, OSError):
        found = {}
    return kinds_of({**TEMPLATE_FAMILIES, **found})


def kind_table(kinds: list[str], values: dict, vs_control: dict, arms: list[str], far_kinds=()) -> list[str]:
    """Attack success by attack kind (tables.kind_tables): one row per kind, each run's value and each arm's paired
    difference vs the control; kinds of the far-transfer families (no training family has them) marked."""
    header = ["attack kind", "baseline"] + list(arms) + [f"Δ {a} vs control" for a in arms if a in vs_control]
    rows = []
    for k in kinds:
        label = md_text(k) + (" (far transfer)" if k in far_kinds else "")
        rows.append([label, _cell(values["baseline"][k], True)] + [_cell(values[a][k], True) for a in arms]
                    + [_cell(vs_control[a][k], True) for a in arms if a in vs_control])
    return _table(header, rows)


def audit_table(agree: dict, counts: dict) -> list[str]:
    """The judge audit (evaluate/audit.py): the reader's label counts per model group, then each judge's agreement
    with the reader per group over the outputs it judged, Wilson 95% CIs; "all" pools the groups."""
    from coherentize.evaluate.audit import AUDIT_LABELS

    groups = [g for g in counts if g != "all"] + ["all"]
    lines = ["Reader's labels of the audited outputs, per model group:\n",
             *_table(["group", *AUDIT_LABELS, "n"],
                     [[md_text(g), *(str(counts[g][k]) for k in AUDIT_LABELS), str(sum(counts[g].values()))]
                      for g in groups]),
             "", "Each judge against the reader, per model group (agreement on the refusal decision: refused vs "
                 "anything else; on attack success: complied_harmful or partial vs anything else; false success: "
                 "of the outputs the judge calls complied, the share the reader does not count as a success; missed "
                 "success: of the reader's successes, the share the judge calls refused; each over the outputs the judge "
                 "labelled, a model judge's replies that did not follow the rubric left out):\n"]
    rows = []
    for judge, by_group in agree.items():
        for g in groups:
            a = by_group[g]
            rows.append([md_text(judge), md_text(g), stats.fmt(a["judged"], pct=True),
                         stats.fmt(a["decision"], pct=True), stats.fmt(a["success"], pct=True),
                         stats.fmt(a["false_success"], pct=True), stats.fmt(a["missed_success"], pct=True)])
    lines += _table(["judge", "group", "judged (a rubric reply it could parse)", "refusal decision agrees",
                     "attack success agrees", "false success", "missed success"], rows)
    return lines


def render_html(markdown: str, plots: dict) -> str:
    """report.md rendered by markdown-it-py (CommonMark + tables, raw HTML off) with the PNGs embedded."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    for tok in tokens:
        for child in tok.children or []:
            if child.type == "image" and child.attrGet("src") in plots:
                child.attrSet("src", "data:image/png;base64," + plots[child.attrGet("src")])
    body = md.renderer.render(tokens, md.options, {})
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>coherentize report</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def adaptive_section(base_items: dict, table: dict, arms: list[str], curves: tuple[list[int], dict],
                     has_control: bool) -> list[str]:
    """The adaptive jailbreak probes' Markdown: one row per probe (with N and the budget) and the search's success
    at each budget checkpoint, every run with its 95% CI. Empty when no probe ran."""
    budgets, runs = curves
    labels = tables.adaptive_labels(base_items, budgets)
    if not labels:
        return []
    names = ["baseline"] + arms
    md = ["", "### Adaptive jailbreak probes\n",
          "Attack success over all harmful requests under attacks that adapt beyond one fixed template, none using a "
          "family training saw (evaluate/adaptive.py): worst of N (a request is broken if any of its N held-out "
          "families broke it), a prefilled compliance opening (the judge sees only the model's continuation), and a "
          "budgeted black-box search over mutations of the held-out templates guided by the refusal margin (a "
          "query: one candidate scored, or one candidate generated and judged). Δ: paired on the same requests.\n"]
    header = ["probe", "baseline"]
    for a in arms:
        header += [a, f"Δ {a} vs baseline"] + ([f"Δ {a} vs control"] if has_control and a != "control" else [])
    rows = []
    for k, label in labels.items():
        row = [md_text(label), _cell(table[k]["baseline"]["value"], True)]
        for a in arms:
            row += [_cell(table[k][a]["value"], True), _cell(table[k][a]["vs_baseline"], True)]
            if has_control and a != "control":
                row.append(_cell(table[k][a].get("vs_control"), True))
        rows.append(row)
    md += _table(header, rows)
    if budgets:
        md += ["", "Black-box search, attack success within b queries per request (the curve in "
                   "jailbreak_search.png):\n"]
        md += _table(["budget b"] + names, [[str(b)] + [_cell(runs[n][j], True) for n in names]
                                             for j, b in enumerate(budgets)])
    return md


def selection_section(selection: dict | None, labels: dict[str, str], level: str = "##") -> list[str]:
    """The learning rate each selected arm trained at, with every candidate's validation score (selection.json), and
    the named arms' descriptions (headings at `level`)."""
    md = []
    labelled = {a: label for a, label in labels.items() if label}
    if labelled:
        md += [f"{level} Arms\n"] + _table(["arm", "what it is"], [[md_text(a), md_text(t)] for a, t in labelled.items()])
        md.append("")
    if selection:
        md += [f"{level} Learning rate chosen on validation\n",
               "Each candidate trained once and scored on validation-split prompts (never the test split): harmful "
               "refusal (requests clean and in the training jailbreak families), benign answer rate, and their harmonic "
               "mean; the best harmonic mean wins (ties: the smaller rate).\n"]
        rows = []
        for arm, info in selection.items():
            for c in info["candidates"]:
                chosen = c["learning_rate"] == info["chosen_learning_rate"]
                rows.append([md_text(arm), f"{c['learning_rate']:g}" + (" (chosen)" if chosen else ""),
                             f"{c['harmful_refusal']:.3f} (n={c['n_harmful_prompts']})",
                             f"{c['benign_answer']:.3f} (n={c['n_benign']})", f"{c['harmonic_mean']:.3f}"])
        md += _table(["arm", "learning rate", "harmful refusal", "benign answer", "harmonic mean"], rows)
        md.append("")
    return md


ORGANISM_FIELDS = ("recipe", "pairs", "before", "after", "selection")
"""The organism stage's figures that travel with the per-item data (numbers and settings; no folder, no text)."""


def data_manifest(root: Path, facts: ExperimentFacts, arms: list[str], code: dict | None, stage_seconds: dict,
                  organism: dict | None = None) -> dict:
    """The experiment's fields of its per-item data's manifest.json (report/data.py); organism: the organism stage's
    done.json, whose ORGANISM_FIELDS go in as "organism" (its recipe, checks and the recipe selection)."""
    return {"experiment": Path(root).name, "model": facts.model, "arms": arms, "seeds": list(facts.seeds),
            "n_boot": facts.n_boot, "code": code, "stage_seconds": stage_seconds,
            "jailbreak_sources": list(facts.jailbreak_sources),
            **({"pressure": facts.pressure} if facts.pressure else {}),
            **({"organism": {k: organism[k] for k in ORGANISM_FIELDS if k in organism}} if organism else {})}


def write_progress(root: Path, facts: ExperimentFacts, baseline_dir: Path, runs: list[RunRecord], dest: Path,
                   code: dict, stage_seconds: dict, organism: dict | None = None,
                   pressure: list[dict] | None = None) -> Path | None:
    """The per-item data of a grid's finished evaluations so far, accumulated into dest (report/data.py's
    ``accumulate``: arm-seeds already there from earlier sessions are kept): what `coherentize run --data-into`
    writes as each job ends, so that a killed session loses no finished arm-seed. pressure: the narrow pressures'
    records measured so far (recipes/pressure.run_pressures). None (nothing written) until the baseline's evaluation
    is done."""
    if not (Path(baseline_dir) / "done.json").is_file():
        return None
    finished = [r for r in runs if (Path(r["eval_dir"]) / "done.json").is_file()]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    manifest = data_manifest(root, facts, arms, code, stage_seconds, organism)
    data = report_data.collect(Path(baseline_dir), finished, manifest)
    data["manifest"]["planned"] = [run_name(r["arm"], r["seed"]) for r in runs]
    data["selection"] = _load_json(Path(root) / "selection.json")
    if pressure:
        data["pressure"] = pressure
    return report_data.accumulate(dest, data)


def organism_lines(organism: dict, level: str = "##") -> list[str]:
    """The model organism's part of a report: its pairs, recipe, own checks before and after, and the recipe
    selection when there was one."""
    md = [f"{level} Model organism\n", f"Pairs: {organism.get('pairs')}. Recipe: "
          f"{json.dumps(organism.get('recipe', {}).get('max_steps'))} SFT steps (full recipe in the organism "
          "folder's organism.json).\n"]
    md += _table(["", "direct harmful refusal", "benign answer rate", "over-refusal"],
                 [[when, _cell(organism.get(when, {}).get("direct_refusal_rate"), True),
                   _cell(organism.get(when, {}).get("benign_answer_rate"), True),
                   _cell(organism.get(when, {}).get("overrefusal_rate"), True)] for when in ("before", "after")])
    return md + [""] + organism_selection_lines(organism.get("selection"))


def organism_selection_lines(selection: dict | None) -> list[str]:
    """The organism recipes checked on the validation split and the one chosen (recipes/organism.select_organism)."""
    if not selection:
        return []
    fields, chosen = selection["fields"], selection["chosen"]
    md = [f"Recipe chosen on the validation split among {len(selection['candidates'])} candidates "
          f"({', '.join(fields)}): " + ", ".join(f"{k} {chosen[k]}" for k in fields) + "; score: the harmonic mean of "
          "direct refusal, benign answers and edgy answers (1 − over-refusal) on validation requests and prompts.\n"]
    md += _table(fields + ["direct refusal", "benign answers", "over-refusal", "score"],
                 [[str(c[k]) for k in fields] + [_cell(c["direct_refusal_rate"], True),
                                                 _cell(c["benign_answer_rate"], True),
                                                 _cell(c["overrefusal_rate"], True), f"{c['score']:.3f}"]
                  for c in selection["candidates"]])
    return md + [""]


def write_report(root: Path, facts: ExperimentFacts, organism: dict | None, baseline_dir: Path,
                 runs: list[RunRecord], clusters: dict, sections: list[str] = ()) -> Path:
    """Write report.md, report.html, the PNGs and report.json into root; return report.md's path.

    facts: the experiment's settings (report/facts.py); runs: one RunRecord per arm-seed; organism and clusters: the
    organism's and the variations stage's done.json contents (organism None when disabled); sections: Markdown lines
    of further sections, placed before the trained models (e.g. report/pressure.py's)."""
    t0 = time.time()
    root = Path(root)
    n_boot = facts.n_boot
    base = _load_json(Path(baseline_dir) / "results.json")
    refused0 = tables.refused_directly(base)
    base_items = tables.run_items(base, refused0)
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    by_arm: dict[str, list[tuple[int, dict]]] = {a: [] for a in arms}
    train_logs, heldout = {}, {}
    per_layer = {"baseline": base["suites"].get("coherence", {}).get("per_layer", [])}
    records, examples_from = {"baseline": _records(baseline_dir)}, set()
    done = {"organism": organism, "variations": clusters, "baseline": _load_json(Path(baseline_dir) / "done.json")}
    for r in runs:
        name = run_name(r["arm"], r["seed"])
        res = _load_json(Path(r["eval_dir"]) / "results.json")
        by_arm[r["arm"]].append((r["seed"], tables.run_items(res, refused0)))
        m = _load_json(Path(r["train_dir"]) / "metrics.json") or {}
        train_logs[name] = m.get("train_log", [])
        per_layer[name] = res["suites"].get("coherence", {}).get("per_layer", [])
        if "heldout_after" in m:
            heldout[name] = (m["heldout_before"]["mean"], m["heldout_after"]["mean"])
        if r["arm"] not in examples_from:  # example outputs: the first seed of each arm
            examples_from.add(r["arm"])
            records[name] = _records(r["eval_dir"])
        done[f"train/{name}"] = _load_json(Path(r["train_dir"]) / "done.json")
        done[f"eval/{name}"] = _load_json(Path(r["eval_dir"]) / "done.json")

    metrics, table = tables.build_table(base_items, by_arm, n_boot)
    fams, fam_cond, fam_uncond = tables.family_tables(base_items, by_arm, n_boot)
    forest = tables.forest_rows(metrics, table, arms)
    curves = tables.search_curves(base_items, by_arm, n_boot)
    kinds, kind_values, kind_vs_control = tables.kind_tables(
        base_items, by_arm, family_kinds(facts.jailbreak_sources), n_boot)
    far_kinds = base["suites"].get("jailbreak", {}).get("far_transfer", {}).get("kinds", [])
    plots = make_plots(table, arms, fam_uncond if fams else {}, train_logs, per_layer, forest, root, curves)
    jb = base["suites"].get("jailbreak", {})
    lines = tables.summary_lines(metrics, table, arms, jb, len(refused0))
    summary = _load_json(root / "summary.json") or {}
    times = tables.stage_times(done, summary)
    # The per-item data behind every figure (no text), for docs/results/data/ (report/data.py).
    data = report_data.collect(Path(baseline_dir), runs, data_manifest(root, facts, arms, summary.get("code"), times,
                                                                       organism))
    pressure_items = root / report_data.PRESSURE_FILE  # the narrow pressures' measures (recipes/pressure.py)
    if pressure_items.is_file():
        from coherentize.report.pressure import read_items

        data["pressure"] = read_items(pressure_items)
    report_data.write({**data, "selection": _load_json(root / "selection.json")}, root / "data")
    base_model = (organism or {}).get("folder") or facts.model
    model_dirs = [{**r, "model_dir": str(Path(r["train_dir"]) / "model")} for r in runs]
    adapters = {d["model_dir"]: (Path(d["model_dir"]) / "adapter_config.json").is_file()
                or (not Path(d["model_dir"]).is_dir() and facts.lora)
                for d in model_dirs}
    exports = tables.export_commands(model_dirs, base_model, adapters)
    names = ["baseline"] + arms
    has_control = "control" in arms

    md = ["# coherentize experiment report\n", f"Output folder: `{root}`. Arms: {', '.join(arms)}; seeds: "
          f"{', '.join(str(s) for s in facts.seeds)}. Model: `{facts.model}`.\n",
          *[f"> {note}\n" for note in facts.notes], "## Summary\n", *lines, ""]
    if "forest.png" in plots:
        md += ["![forest.png](forest.png)\n",
               "The figure behind the Summary: each headline metric's paired differences with their 95% CIs "
               "(a CI clear of the dashed zero line is a change the Summary names).\n"]
    md += ["Figures are means over prompts with 95% CIs and n = the number of prompts. Seeds are not new prompts: "
           "with several seeds the interval resamples seeds and, within them, the same prompts (a two-level "
           "bootstrap, evaluate/stats.py), so it includes training noise, and each seed's own value follows it. Rates "
           "get Wilson intervals and paired rate differences Newcombe's (with several seeds at n divided by the "
           "seeds' design effect), so 0% and 100% keep a width; other figures a "
           f"percentile bootstrap, and the Summary names a bootstrap change only on {tables.MIN_BOOTSTRAP_ITEMS} "
           "prompts or more. Δ columns are "
           "paired differences on the same prompts (arm − baseline; arm − control within a seed). Refusals are "
           f"judged by `{base.get('judge', {}).get('name', 'string')}`.\n"]
    for note in base.get("judge", {}).get("notes", []):
        md.append("> " + " ".join(note.split()) + "\n")  # the project's own wording, Markdown allowed
    if organism:
        md += organism_lines(organism)
    counts = {k: v for k, v in (clusters or {}).items() if k != tables.WALL_KEY}
    md += ["## Training data\n", f"Clusters: {counts}. Families: {', '.join(facts.families)}"
           + (f"; harmful anchors wrapped in {', '.join(facts.jailbreak_families)}"
              if facts.jailbreak_families else "") + ".\n"]

    md += selection_section(_load_json(root / "selection.json"), facts.arm_labels)

    md += ["## Results\n", tables.interval_note(table, arms) + "\n"] + results_table(metrics, table, arms)
    if fams:
        md += ["", "### Jailbreak success per held-out family\n"]
        md += family_table(fams, fam_cond, fam_uncond, names, len(base_items.get("jailbreak.refused_direct", {})),
                           len(refused0))
    if kinds:
        md += ["", "### Attack success by attack kind\n",
               "Over all harmful requests, a request's success averaged over the families of that kind it was wrapped "
               "in (a family of several kinds counts in each). \"far transfer\": a kind no training family has.\n"]
        md += kind_table(kinds, kind_values, kind_vs_control, arms, far_kinds)
    md += adaptive_section(base_items, table, arms, curves, has_control)
    if heldout:
        md += ["", "### Held-out clusters during training (training-side measurement)\n"]
        hrows = []
        for name, (b, a) in heldout.items():
            act = ", ".join(f"{k.split('/')[1]}: {b[k]:.4g} → {a[k]:.4g}" for k in a if k.startswith("act_l2/"))
            hrows.append([name, f"{b['output_js']:.4g} → {a['output_js']:.4g}", act,
                          f"{a.get('kl_to_original') or 0:.4g}"])
        md += _table(["run", "output JS before → after", "activation L2 before → after", "KL to original after"],
                     hrows)

    examples = tables.example_outputs(records)
    if examples:
        md += ["", "## Example outputs\n",
               "A few prompts per family, the same in every run (prompts whose decision differs between runs first), "
               "first seed of each arm. Redacted as in records.csv: a harmful request is named by its id only, a "
               "complied answer to it is never shown, a refusal shows its first 60 characters.\n"]
        run_names = list(records)
        for ex in examples:
            md += [f"### {md_text(ex['suite'])}: {md_text(ex['family'])}\n"]
            md += _table(["prompt id"] + run_names,
                         [[md_text(row["prompt_id"])] + [md_text(row["cells"].get(n, "")) for n in run_names]
                          for row in ex["rows"]])
            md.append("")
    md += ["", "## Stage times\n"]
    if times:
        md += _table(["stage", "wall time (s)"], [[md_text(s), f"{t:.0f}"] for s, t in times.items()]
                     + [["**total**", f"**{sum(times.values()):.0f}**"]])
        if facts.jobs > 1 and isinstance(summary.get("wall_seconds"), (int, float)):
            md.append(f"\nThe total adds up every stage's own time; with jobs: {facts.jobs} the jobs overlapped, and "
                      f"this invocation took {summary['wall_seconds']:.0f} s of wall clock up to the report "
                      "(summary.json: wall_seconds).")
    else:
        md.append(f"Not recorded by this run (no `{tables.WALL_KEY}` in the stages' done.json).")
    md += ["", *sections] if sections else []
    md += ["", "## Trained models\n",
           "Each arm and seed's trained model (a LoRA adapter where lora is enabled) and the command that exports it "
           "as a plain transformers folder (merged weights and tokenizer) for lm-eval-harness or inspect_ai.\n"]
    md += _table(["run", "folder", "export"], [[e["run"], f"`{e['path']}`", f"`{e['command']}`"] for e in exports])
    rest = [n for n in plots if n != "forest.png"]
    md += ["", "## Plots\n"] + [f"![{n}]({n})\n" for n in rest]
    md += ["## Configuration\n", "```json", json.dumps(facts.config, indent=1, default=str)[:6000], "```"]
    md.append(f"\nReport written in {time.time() - t0:.1f} s.")
    text = "\n".join(md) + "\n"
    out = root / "report.md"
    out.write_text(text, encoding="utf-8")
    (root / "report.html").write_text(render_html(text, plots), encoding="utf-8")
    figures = {"table": table, "family_success_unconditional": fam_uncond, "family_success_given_refused": fam_cond,
               "adaptive": {"labels": tables.adaptive_labels(base_items, curves[0]),
                            "search_curve": {"budgets": curves[0], "runs": curves[1]}},
               "by_kind": {"values": kind_values, "vs_control": kind_vs_control, "far_transfer_kinds": far_kinds},
               "stage_seconds": times, "exports": exports}
    (root / "report.json").write_text(json.dumps(figures, indent=1, default=str))
    return out
