"""Evaluation: coherence metrics and downstream probes, judged and summarised with n and a 95% bootstrap CI.

Where things are: coherence.py (output JS/KL, decision agreement, activation separation, self-report),
jailbreak.py / overrefusal.py / sycophancy.py / capability.py (probes), judges.py (refusal detector, model judge),
stats.py (bootstrap CIs, paired differences), (prompt sources live in coherentize.sources), overlap.py (train/eval contamination),
results.py (JSON + CSV output, redaction rule), suite.py (EvalConfig, run_suite).
"""

from coherentize.evaluate.results import read_results, write_results
from coherentize.evaluate.stats import compare, paired_difference, summarize
from coherentize.evaluate.suite import SUITES, EvalConfig, run_suite

__all__ = ["EvalConfig", "SUITES", "run_suite", "write_results", "read_results", "compare", "paired_difference",
           "summarize"]
