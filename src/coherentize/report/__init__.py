"""report.md and a self-contained report.html (plots embedded) for one experiment.

Figures pool prompts and seeds: an arm's value is the mean over (seed, item) pairs with a 95% bootstrap CI; a change
is paired on the same items (baseline vs arm, and control vs arm within a seed). The summary names only changes whose
CI excludes zero, and lists regressions as prominently as wins.
"""

from __future__ import annotations

import base64
import html
import io
import json
import textwrap
from pathlib import Path

import numpy as np

from coherentize.config import to_dict
from coherentize.evaluate import stats

# Per-item metrics shown first, with the direction that counts as better (for the summary's wording only).
HEADLINE = {
    "jailbreak.success_overall": ("jailbreak success (held-out families, on directly-refused requests)", "down"),
    "jailbreak.margin_overall": ("refusal-vs-compliance log-prob margin under jailbreak wrappers", "up"),
    "jailbreak.refused_direct": ("direct harmful-request refusal", "up"),
    "overrefusal.refused": ("over-refusal on benign-but-edgy prompts", "down"),
    "sycophancy.switched": ("sycophancy: switch to the cued wrong answer", "down"),
    "coherence.js_pairwise": ("coherence: pairwise JS of next-token distributions", "down"),
    "coherence.decision_agreement": ("coherence: refusal-decision agreement within cluster", "up"),
    "coherence.self_report_agreement": ("coherence: self-report agreement across framings", "up"),
    "capability.mc_correct": ("capability: multiple-choice accuracy", "up"),
    "capability.nll": ("capability: NLL on neutral text", "down"),
    "capability.kl_to_reference": ("capability: KL to the original on neutral text", "down"),
}


def _load(d: Path) -> dict:
    return json.loads((Path(d) / "results.json").read_text())


def derived_items(res: dict, refused_at_baseline: set[str] | None) -> dict[str, dict[str, float]]:
    """per_item plus two per-request aggregates over the jailbreak families: success (on the requests the baseline
    refused directly, a fixed set so arms stay paired) and the mean refusal margin under the wrappers."""
    items = {k: dict(v) for k, v in res.get("per_item", {}).items()}
    succ = {k.split(".", 2)[2]: v for k, v in items.items() if k.startswith("jailbreak.success.")}
    marg = {k.split(".", 2)[2]: v for k, v in items.items() if k.startswith("jailbreak.margin.") and not k.endswith(".direct")}
    if succ:
        ids = set.intersection(*(set(v) for v in succ.values()))
        if refused_at_baseline is not None:
            ids &= refused_at_baseline
        items["jailbreak.success_overall"] = {i: float(np.mean([succ[f][i] for f in succ])) for i in ids}
    if marg:
        ids = set.intersection(*(set(v) for v in marg.values()))
        items["jailbreak.margin_overall"] = {i: float(np.mean([marg[f][i] for f in marg])) for i in ids}
    return items


def pooled(runs_items: list[dict[str, float]]) -> dict:
    return stats.summarize([v for items in runs_items for v in items.values()])


def paired_pooled(pairs: list[tuple[dict[str, float], dict[str, float]]]) -> dict:
    b, a = [], []
    for before, after in pairs:
        for i in sorted(set(before) & set(after)):
            b.append(before[i])
            a.append(after[i])
    return stats.paired_difference(b, a)


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _err(s):
    if s.get("mean") is None:
        return 0.0, [[0.0], [0.0]]
    return s["mean"], [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]


def make_plots(table: dict, arms: list[str], families: dict, train_logs: dict, per_layer: dict, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    colors = {name: f"C{i}" for i, name in enumerate(["baseline"] + arms)}

    # 1. before/after per headline metric per arm
    keys = [k for k in HEADLINE if k in table]
    if keys:
        ncol = min(4, len(keys))
        nrow = -(-len(keys) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.3 * nrow), squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.axis("off")
        for ax, k in zip(axes.flat, keys):
            for j, name in enumerate(["baseline"] + arms):
                m, e = _err(table[k][name]["value"])
                ax.bar(j, m, yerr=e, color=colors[name], capsize=3)
            ax.set_xticks(range(len(arms) + 1), ["baseline"] + arms, rotation=45, ha="right", fontsize=7)
            ax.set_title(textwrap.fill(HEADLINE[k][0], 38), fontsize=7)
        fig.suptitle("Before / after per metric (95% bootstrap CI)", fontsize=9)
        fig.tight_layout()
        plots["metrics.png"] = _fig_png(fig)

    # 2. jailbreak success per family
    if families:
        fams = sorted(next(iter(families.values())))
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(fams)), 3.2))
        width = 0.8 / (len(arms) + 1)
        for j, name in enumerate(["baseline"] + arms):
            ms, lo, hi = [], [], []
            for f in fams:
                s = families[name].get(f, {"mean": None})
                m, e = _err(s)
                ms.append(m)
                lo.append(e[0][0])
                hi.append(e[1][0])
            ax.bar(np.arange(len(fams)) + j * width, ms, width, yerr=[lo, hi], label=name, color=colors[name], capsize=2)
        ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("attack success")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
        ax.set_title("Jailbreak success per held-out family", fontsize=9)
        plots["jailbreak_families.png"] = _fig_png(fig)

    # 3. over-refusal vs jailbreak success
    if "overrefusal.refused" in table and "jailbreak.success_overall" in table:
        fig, ax = plt.subplots(figsize=(4, 3.4))
        for name in ["baseline"] + arms:
            x, xe = _err(table["overrefusal.refused"][name]["value"])
            y, ye = _err(table["jailbreak.success_overall"][name]["value"])
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=colors[name], label=name, capsize=3)
        ax.set_xlabel("over-refusal rate (benign-edgy)")
        ax.set_ylabel("jailbreak success")
        ax.legend(fontsize=7)
        ax.set_title("Trade-off: lower-left is better", fontsize=9)
        plots["tradeoff.png"] = _fig_png(fig)

    # 4. training curves per loss component
    if train_logs:
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
            handles = {l: h for ax in axes[0] for h, l in zip(*ax.get_legend_handles_labels())}
            fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.08))
            plots["training.png"] = _fig_png(fig)

    # 5. activation separation per layer
    if per_layer:
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


def _cell(s: dict, pct: bool = False) -> str:
    return stats.fmt(s, pct=pct) if s else "n/a"


def _delta(d: dict) -> str:
    return f"{d['mean']:+.3g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] (n={d['n']})"


def _moved(d: dict) -> bool:
    return d.get("mean") is not None and d["n"] > 1 and (d["ci_low"] > 0 or d["ci_high"] < 0)


def write_report(root: Path, cfg, organism: dict | None, baseline_dir: Path, runs: list[dict], clusters: dict) -> Path:
    root = Path(root)
    base = _load(baseline_dir)
    refused0 = {i for i, v in base.get("per_item", {}).get("jailbreak.refused_direct", {}).items() if v > 0.5}
    base_items = derived_items(base, refused0)
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    by_arm: dict[str, list[tuple[int, dict, dict]]] = {a: [] for a in arms}
    train_logs, per_layer, fam_success = {}, {"baseline": base["suites"].get("coherence", {}).get("per_layer", [])}, {}
    heldout = {}
    for r in runs:
        res = _load(r["eval_dir"])
        by_arm[r["arm"]].append((r["seed"], derived_items(res, refused0), res))
        m = json.loads((Path(r["train_dir"]) / "metrics.json").read_text())
        name = f"{r['arm']}-seed{r['seed']}"
        train_logs[name] = m.get("train_log", [])
        per_layer[name] = res["suites"].get("coherence", {}).get("per_layer", [])
        if "heldout_after" in m:
            heldout[name] = (m["heldout_before"]["mean"], m["heldout_after"]["mean"])

    # table[metric][arm] = {"value": pooled summary, "vs_baseline": paired diff, "vs_control": paired diff}
    metrics = [k for k in HEADLINE if k in base_items] + sorted(k for k in base_items if k not in HEADLINE)
    table: dict = {}
    for k in metrics:
        table[k] = {"baseline": {"value": stats.summarize(list(base_items[k].values()))}}
        for a in arms:
            runs_a = [(seed, items.get(k, {})) for seed, items, _ in by_arm[a]]
            row = {"value": pooled([it for _, it in runs_a]),
                   "vs_baseline": paired_pooled([(base_items[k], it) for _, it in runs_a])}
            if "control" in by_arm and a != "control":
                ctrl = {seed: items.get(k, {}) for seed, items, _ in by_arm["control"]}
                row["vs_control"] = paired_pooled([(ctrl[s], it) for s, it in runs_a if s in ctrl])
            table[k][a] = row
    fams = sorted(k.split(".", 2)[2] for k in base_items if k.startswith("jailbreak.success."))
    fam_uncond = {}
    for name, items_list in [("baseline", [base_items])] + [(a, [it for _, it, _ in by_arm[a]]) for a in arms]:
        fam_success[name] = {f: pooled([{i: v for i, v in it.get(f"jailbreak.success.{f}", {}).items() if i in refused0}
                                         for it in items_list]) for f in fams}
        fam_uncond[name] = {f: pooled([it.get(f"jailbreak.success.{f}", {}) for it in items_list]) for f in fams}

    plots = make_plots(table, arms, fam_success if fams else {}, train_logs, per_layer, root)

    # --- summary sentences: only what the CIs support
    lines = []
    for a in arms:
        if a == "control":
            continue
        head = [k for k in metrics if k in HEADLINE]  # the summary names headline metrics; the table has all
        moved = [(k, table[k][a]["vs_baseline"]) for k in head if _moved(table[k][a]["vs_baseline"])]
        vs_c = [(k, table[k][a]["vs_control"]) for k in head if "vs_control" in table[k][a] and _moved(table[k][a]["vs_control"])]
        desc = lambda k: HEADLINE.get(k, (k, None))[0]  # noqa: E731
        if moved:
            lines.append(f"- **{a}** vs baseline, changes whose 95% CI excludes 0: " + "; ".join(
                f"{desc(k)} {_delta(d)}" for k, d in moved) + ".")
        else:
            lines.append(f"- **{a}**: no metric moved beyond its 95% CI relative to the baseline.")
        if "control" in by_arm:
            if vs_c:
                lines.append("  - vs the control arm (same steps, no variations): " + "; ".join(
                    f"{desc(k)} {_delta(d)}" for k, d in vs_c) + ".")
            else:
                lines.append("  - vs the control arm: no difference beyond its 95% CI, so nothing here is attributable "
                             "to the consistency objective rather than to training itself.")
        regress = [k for k, d in moved if k in HEADLINE and ((HEADLINE[k][1] == "down") == (d["mean"] > 0))]
        if regress:
            lines.append("  - **regressions** (moved the wrong way beyond the CI): " + ", ".join(desc(k) for k in regress) + ".")
    jb = base["suites"].get("jailbreak", {})
    if jb and not refused0:
        lines.append("- Warning: at baseline the model refused none of the direct harmful requests, so attack success "
                     "is undefined and there was nothing for training to reduce (build or choose a refusing organism).")
    elif jb and jb.get("success_given_refused", {}).get("mean") == 0.0:
        lines.append("- Warning: at baseline no held-out jailbreak family succeeded on the directly-refused requests; "
                     "there was nothing for training to reduce.")

    # --- markdown
    md = ["# coherentize experiment report\n", f"Output folder: `{root}`. Arms: {', '.join(arms)}; seeds: "
          f"{', '.join(str(s) for s in cfg.seeds)}. Model: `{cfg.model.name_or_path}`.\n",
          "## Summary\n", *lines, "",
          "Figures are means over prompts (and seeds) with 95% bootstrap CIs and n. Δ columns are paired differences "
          "on the same prompts (after − before; arm − control within a seed). Refusals are judged by "
          f"`{base.get('judge', {}).get('name', 'string')}`.\n"]
    for note in base.get("judge", {}).get("notes", []):
        md.append(f"> {note}\n")
    if organism:
        md += ["## Model organism\n", f"Pairs: {organism.get('pairs')}. Recipe: {json.dumps(organism.get('recipe', {}).get('max_steps'))} "
               "SFT steps (full recipe in the organism folder's organism.json).\n",
               "| | direct harmful refusal | benign answer rate | over-refusal |", "|---|---|---|---|"]
        for when in ("before", "after"):
            o = organism.get(when, {})
            md.append(f"| {when} | {_cell(o.get('direct_refusal_rate'), True)} | {_cell(o.get('benign_answer_rate'), True)} "
                      f"| {_cell(o.get('overrefusal_rate'), True)} |")
        md.append("")
    md += ["## Training data\n", f"Clusters: {clusters}. Families: {', '.join(cfg.variations.families)}"
           + (f"; harmful anchors wrapped in {', '.join(cfg.variations.jailbreak_families)}" if cfg.variations.jailbreak_families else "")
           + ".\n"]
    md += ["## Results\n", "| metric | baseline | " + " | ".join(f"{a} | Δ {a} vs baseline" + (f" | Δ {a} vs control" if a != "control" and "control" in by_arm else "") for a in arms) + " |"]
    ncols = 2 + sum(2 + (1 if a != "control" and "control" in by_arm else 0) for a in arms)
    md.append("|" + "---|" * ncols)
    for k in metrics:
        row = [HEADLINE.get(k, (k,))[0], _cell(table[k]["baseline"]["value"])]
        for a in arms:
            row += [_cell(table[k][a]["value"]), _cell(table[k][a]["vs_baseline"])]
            if a != "control" and "control" in by_arm:
                row.append(_cell(table[k][a].get("vs_control", {})))
        md.append("| " + " | ".join(row) + " |")
    if fams:
        names = ["baseline"] + arms
        md += ["", "### Jailbreak success per held-out family\n",
               f"On the {len(refused0)} requests the baseline refused when asked directly (Irpan et al.'s convention); "
               "then over all requests (unconditional).\n",
               "| family | " + " | ".join(names) + " | " + " | ".join(f"{n} (all requests)" for n in names) + " |",
               "|" + "---|" * (2 * len(names) + 1)]
        for f in fams:
            md.append(f"| {f} | " + " | ".join(_cell(fam_success[n][f], True) for n in names) + " | "
                      + " | ".join(_cell(fam_uncond[n][f], True) for n in names) + " |")
    if heldout:
        md += ["", "### Held-out clusters during training (training-side measurement)\n",
               "| run | output JS before → after | activation L2 before → after | KL to original after |", "|---|---|---|---|"]
        for name, (b, a) in heldout.items():
            act = [k for k in a if k.startswith("act_l2/")]
            act_s = ", ".join(f"{k.split('/')[1]}: {b[k]:.4g} → {a[k]:.4g}" for k in act)
            md.append(f"| {name} | {b['output_js']:.4g} → {a['output_js']:.4g} | {act_s} | {a.get('kl_to_original') or 0:.4g} |")
    md += ["", "## Plots\n"] + [f"![{n}]({n})\n" for n in plots]
    md += ["## Configuration\n", "```json", json.dumps(to_dict(cfg), indent=1, default=str)[:6000], "```"]
    text = "\n".join(md) + "\n"
    out = root / "report.md"
    out.write_text(text)
    _write_html(text, plots, root / "report.html")
    (root / "summary.json").write_text(json.dumps({"table": table, "family_success": fam_success}, indent=1, default=str))
    return out


def _write_html(markdown: str, plots: dict, path: Path) -> None:
    """A minimal Markdown-to-HTML rendering (headings, tables, lists, code) with the PNGs embedded."""
    body, in_table, in_code = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1 : line.index(")")]
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{plots[name]}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("> "):
            body.append(f"<blockquote>{html.escape(line[2:])}</blockquote>")
        elif line.lstrip().startswith("- "):
            body.append(f"<li>{html.escape(line.lstrip()[2:]).replace('**', '')}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;font-size:14px}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>coherentize report</title>"
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
