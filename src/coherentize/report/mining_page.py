"""The page of ``coherentize mine``: mine.md, a self-contained mine.html (markdown-it-py, PNG embedded, through
``render.render_html``) and families.png (each family's mean incoherence score with its 95% CI).

Redaction: prompts are cut to PROMPT_EXCERPT characters and answers come cut from the records (evaluate/mining.py's
ANSWER_EXCERPT); a harmful cluster is named by its id only, with its judged labels and no prompt or answer text.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

from coherentize.chat import prompt_text
from coherentize.evaluate import stats
from coherentize.report.render import _fig_png, _table, md_text, render_html

PROMPT_EXCERPT = 120
"""Characters of a prompt shown in an example pair."""
EXAMPLES = 5
"""Example pairs on the page: the best-scoring variation of each of the top clusters."""


def families_plot(families: dict):
    """Horizontal bars: each family's mean score (95% CI over its variations), the most incoherent on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(families)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(names) + 1.2))
    for y, name in enumerate(names):
        s = families[name]["score"]
        ax.errorbar(s["mean"], y, xerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]], fmt="o", color="C0",
                    capsize=3, ms=5)
        flips = families[name]["flips"]["mean"]
        ax.barh(y, flips, height=0.5, color="C3", alpha=0.3)  # the share of the score that is flips (weight 1)
    ax.set_yticks(range(len(names)), [f"{n} (n={families[n]['n']})" for n in names], fontsize=7)
    ax.set_xlabel("incoherence score (mean over variations, 95% CI); shaded: decision-flip rate", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("Which variation families move the model most", fontsize=9)
    fig.tight_layout()
    return fig


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _label(refused: bool, choice: str | None) -> str:
    return ("refused" if refused else "answered") + (f", chose ({choice})" if choice else "")


def example_rows(s) -> list[list[str]]:
    """The anchor and the cluster's best-scoring variation, as table rows (redacted as the module docstring says)."""
    j = max(range(len(s.variations)), key=lambda j: s.variations[j].score)
    v, var = s.variations[j], s.cluster.variations[j].prompt
    if s.harmful:
        return [["anchor", "[harmful request: not shown]", "[not shown]", _label(s.anchor_refused, s.anchor_choice)],
                [f"variation ({md_text(v.family)})", "[not shown]", "[not shown]", _label(v.refused, v.choice)]]
    return [["anchor", md_text(_cut(prompt_text(s.cluster.anchor), PROMPT_EXCERPT)), md_text(s.anchor_answer or ""),
             _label(s.anchor_refused, s.anchor_choice)],
            [f"variation ({md_text(v.family)})", md_text(_cut(prompt_text(var), PROMPT_EXCERPT)),
             md_text(v.answer or ""), _label(v.refused, v.choice) + f"; JS {_num(v.js)} nats"]]


def write_page(out: Path, ranked: list, families: dict, top: int, meta: dict) -> list[Path]:
    """Write mine.md, mine.html and families.png into out; return their paths. ranked: ScoredClusters, most
    incoherent first; families: mining.rank_families; meta: model, input, settings, scored, resumed, seconds and
    formula (the score's definition, mining.FORMULA)."""
    out = Path(out)
    plots = {"families.png": _fig_png(families_plot(families))} if families else {}
    for name, b64 in plots.items():
        (out / name).write_bytes(base64.b64decode(b64))
    settings = meta.get("settings", {})
    n_top = min(top, len(ranked))
    md = ["# coherentize mine\n",
          f"Model: `{meta.get('model', settings.get('model'))}`. Input: `{meta.get('input', settings.get('input'))}`. "
          f"Clusters: {len(ranked)} ({meta.get('scored', 0)} scored in this run, {meta.get('resumed', 0)} resumed). "
          f"Layers: {md_text(str(settings.get('layers', 'n/a')))}. Answers: greedy, at most "
          f"{settings.get('max_new_tokens', 'n/a')} tokens. Wall time of this run: {meta.get('seconds', 0):.0f} s.\n",
          "## The score\n",
          md_text(meta.get("formula", "")) + "\n",
          "> Refusals are judged by the string detector (coherentize/evaluate/judges.py): it counts an answer opening "
          "with an apology (\"I'm sorry for any confusion, ...\") as a refusal and misses refusals in other words, so "
          "read the example pairs before trusting a flip.\n"]
    if plots:
        md += ["## Families\n", "![families.png](families.png)\n"]
        md += _table(["rank", "family", "variations", "score", "decision flips", "JS (bits)", "activation distance"],
                     [[str(i), md_text(f), str(d["n"]), stats.fmt(d["score"]), stats.fmt(d["flips"], pct=True),
                       stats.fmt(d["js_bits"]), stats.fmt(d["act"])] for i, (f, d) in enumerate(families.items(), 1)])
    md += ["", f"## Top {n_top} clusters\n",
           f"In `top.jsonl`, training-ready (the clusters as given, tags.mined added; each keeps its tags.split): "
           f"`coherentize train --set data.train_file={out / 'top.jsonl'} --set data.split=null --set "
           "data.eval_split=null`, or give held-out clusters with `data.eval_file`. Every cluster's scores are in "
           "`ranked.jsonl`, the families' in `families.json`.\n"]
    rows = []
    for i, s in enumerate(ranked[:n_top], 1):
        worst = max(s.variations, key=lambda v: v.score)
        rows.append([str(i), md_text(s.id), f"{s.score:.3f}", f"{s.flips:.0%}", f"{s.refusal_flips:.0%}",
                     "n/a" if s.mc_flips is None else f"{s.mc_flips:.0%}",
                     _num(None if s.js_to_anchor is None else s.js_to_anchor / math.log(2)),
                     _num(s.act, 4), md_text(worst.family)])
    md += _table(["rank", "cluster", "score", "decision flips", "refusal flips", "MC flips", "JS (bits)",
                  "activation distance", "worst family"], rows)
    md += ["", "## Example pairs\n",
           f"The best-scoring variation of each of the top {min(EXAMPLES, n_top)} clusters. Prompts cut to "
           f"{PROMPT_EXCERPT} characters and answers to the records' excerpt; a harmful request is named by its id "
           "only and shows judged labels, never text.\n"]
    for i, s in enumerate(ranked[: min(EXAMPLES, n_top)], 1):
        md += [f"### {i}. {md_text(s.id)} (score {s.score:.3f})\n"]
        md += _table(["", "prompt", "greedy answer", "judged"], example_rows(s)) + [""]
    text = "\n".join(md) + "\n"
    (out / "mine.md").write_text(text, encoding="utf-8")
    html = render_html(text, plots).replace("<title>coherentize report</title>", "<title>coherentize mine</title>")
    (out / "mine.html").write_text(html, encoding="utf-8")
    return [out / "mine.md", out / "mine.html"] + [out / n for n in plots]
