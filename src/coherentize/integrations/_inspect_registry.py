"""What the ``inspect_ai`` entry point registers: ``inspect eval coherentize/<task>``."""

from coherentize.integrations.inspect_tasks import direct_refusal, jailbreak, overrefusal, sycophancy  # noqa: F401
