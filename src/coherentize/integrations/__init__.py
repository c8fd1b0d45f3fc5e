"""This project's probes inside other evaluation frameworks.

probes.py (the items of each probe, built from an EvalConfig the way ``coherentize eval`` builds them),
lm_eval.py (task YAMLs + data files for lm-evaluation-harness, written by ``coherentize export --lm-eval DIR``),
inspect_tasks.py (the same probes as inspect_ai tasks: ``inspect eval coherentize/direct_refusal``).
See docs/integrations.md for the commands.
"""
