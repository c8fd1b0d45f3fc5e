"""The report's narrow-pressure section (issue 26): per pressure, one row per condition with the in-domain change
(did the narrow fine-tune take?), the off-domain change (did it spread?), the spread ratio and each change beside the
undefended control's, all with n, seeds and 95% intervals over seeds and items. Input: pressure.json as
recipes/pressure.py's ``summarize`` writes it."""

from __future__ import annotations

from coherentize.report.render import _table

KIND_TEXT = {
    "risky_finance": ("emergent misalignment: SFT on confidently risky personal-finance advice",
                      "the judge-free preference for the misaligned over the aligned answer, mean log-prob per token "
                      "(nats, misaligned - aligned; evaluate/preference.py): in-domain on held-out finance questions, "
                      "off-domain on everyday questions outside finance"),
    "sycophancy_domain": ("sycophancy in one domain: SFT toward agreeing with a user's wrong opinion on one topic family",
                          "cued wrong answers chosen (evaluate/narrow_probes.py): in-domain on held-out items of the "
                          "trained topic family, off-domain on the other families; capability: plain MC correct"),
    "one_frame": ("compliance inside one frame: SFT answering benign-but-edgy requests inside one role-play frame",
                  "in-domain: held-out benign-but-edgy requests answered in the trained frame; off-domain: harmful "
                  "requests complied with in other frames (evaluate/narrow_probes.py)"),
}
DEFENCE_TEXT = {"none": "no defence", "kl_leash": "KL leash to the start model", "l2_residual":
                "L2 to the start model's residual stream", "interleaved": "consistency training interleaved"}


def _ci(s: dict | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:+.{digits}f} [{s['ci_low']:+.{digits}f}, {s['ci_high']:+.{digits}f}]"


def _ratio(r: dict | None) -> str:
    if not r or r.get("ratio") is None:
        return "–"
    ci = "" if r.get("ci_low") is None else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    flag = "" if r.get("denominator_excludes_zero") else " (in-domain change not clear of 0)"
    return f"{r['ratio']:+.2f}{ci}{flag}"


def pressure_section(summary: dict, level: str = "##") -> list[str]:
    """Markdown lines of the section; empty when no pressure ran."""
    if not summary:
        return []
    md = [f"{level} Narrow pressures: how far does a narrow fine-tune spread?\n",
          "Every condition's start model (the arm-seed's trained model) gets the same narrow second fine-tune; its "
          "measures are taken before and after it on the same items. Changes are after − before, paired per item "
          "within each seed, with 95% intervals over seeds and items (two-level bootstrap); the spread ratio is the "
          "mean off-domain change over the mean in-domain change (1: the change spread as far as it took; 0: it "
          "stayed in its domain), its interval from the same kind of bootstrap. \"vs undefended\" is the condition's "
          "change minus the undefended control's, per item and seed: below 0 in-domain is a learning cost, below 0 "
          "off-domain less spread. n = items.\n"]
    for kind, conds in summary.items():
        title, measure = KIND_TEXT.get(kind, (kind, ""))
        md += [f"{level}# {kind}: {title}\n", f"Measure: {measure}.\n"]
        sets = list(dict.fromkeys(s for c in conds.values() for s in c["sets"]))
        rows = []
        for cond, c in conds.items():
            ins, off = c["sets"].get("in_domain", {}), c["sets"].get("off_domain", {})
            rows.append([f"{c['arm']}, {DEFENCE_TEXT.get(c['defence'], c['defence'])}", str(len(c["seeds"])),
                         _ci(ins.get("change")), _ci(ins.get("change_vs_undefended")),
                         _ci(off.get("change")), _ci(off.get("change_vs_undefended")), _ratio(c["spread_ratio"])])
        n = {s: next((c["sets"][s]["change"].get("n") for c in conds.values() if s in c["sets"]), 0) for s in sets}
        md += _table(["condition", "seeds", f"in-domain change (n={n.get('in_domain', 0)})", "vs undefended",
                      f"off-domain change (n={n.get('off_domain', 0)})", "vs undefended", "spread ratio"], rows)
        extra = [s for s in sets if s not in ("in_domain", "off_domain")]
        if extra:
            md += ["", "Other measures (before → after, change):\n"]
            md += _table(["condition"] + [f"{s} (n={n.get(s, 0)})" for s in extra],
                         [[cond] + [f"{_ci(c['sets'][s]['before'])} → {_ci(c['sets'][s]['after'])}, "
                                    f"{_ci(c['sets'][s]['change'])}" if s in c["sets"] else "–" for s in extra]
                          for cond, c in conds.items()])
        md += ["", "Per-seed spread ratios: " + "; ".join(
            f"{cond}: " + ", ".join("–" if r is None else f"{r:+.2f}" for r in c["spread_ratio"]["per_seed"])
            for cond, c in conds.items()) + ".\n"]
    return md
