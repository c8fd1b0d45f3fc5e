from coherentize.report import render
from coherentize.report.tables import FRAMED_BENIGN


def _s(mean):
    return {"value": {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n": 10}}


def test_tradeoff_plot_sets_attack_success_beside_refusing_benign_prompts_in_jailbreak_frames(tmp_path, monkeypatch):
    figures, real = {}, render._fig_png

    def keep(fig):
        figures[len(figures)] = fig
        return real(fig)

    monkeypatch.setattr(render, "_fig_png", keep)
    table = {"jailbreak.success_unconditional": {"baseline": _s(0.5), "bct": _s(0.2)},
             "overrefusal.refused": {"baseline": _s(0.3), "bct": _s(0.4)},
             FRAMED_BENIGN: {"baseline": _s(0.9), "bct": _s(0.6)}}
    plots = render.make_plots(table, ["bct"], {}, {}, {}, [], tmp_path)
    fig = figures[list(plots).index("tradeoff.png")]
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert labels == ["over-refusal rate (benign-edgy)", "refusal of benign prompts in jailbreak frames"]
    # the framed panel plots refusal = 1 - answer rate: bct refuses 40% of framed benign prompts
    xs = sorted(round(float(line.get_xdata()[0]), 3) for line in fig.axes[1].lines if len(line.get_xdata()) == 1)
    assert 0.4 in xs and 0.1 in xs
