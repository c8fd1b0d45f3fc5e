"""The experiment report: ``tables`` computes every figure (pure, tested), ``render`` writes report.md, report.html
(markdown-it-py, plots embedded), the PNGs and report.json.

    from coherentize.report import write_report
"""

from coherentize.report.render import write_report

__all__ = ["write_report"]
