"""What the report needs to know about the experiment, as typed records: the recipe fills them, the report reads them
(the report never reads an experiment config, so no arrow runs from report/ up to recipes/).

- ``ExperimentFacts``: the experiment-wide settings the report prints or computes with;
- ``RunRecord``: one arm-seed's training and evaluation folders (a TypedDict: also what runs.json holds);
- ``run_name``: an arm-seed's name everywhere (stage folders, data folders, reports): ``<arm>-seed<seed>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from coherentize.evaluate import stats


class RunRecord(TypedDict):
    arm: str
    seed: int
    train_dir: str
    eval_dir: str


def run_name(arm: str, seed: int) -> str:
    """An arm-seed's name: ``<arm>-seed<seed>`` (its stage folders, its runs in a data folder and a report)."""
    return f"{arm}-seed{seed}"


@dataclass(frozen=True)
class ExperimentFacts:
    model: str
    """The model the experiment starts from (name or path)."""
    seeds: list[int]
    n_boot: int = stats.N_BOOT
    """Bootstrap draws of every interval."""
    jailbreak_sources: list[str] = field(default_factory=list)
    """Template sources of the evaluation's jailbreak families (their attack kinds)."""
    lora: bool = True
    """Whether the arms trained LoRA adapters (the export commands merge them)."""
    families: list[str] = field(default_factory=list)
    """The variations' families."""
    jailbreak_families: list[str] = field(default_factory=list)
    """Training jailbreak families of harmful anchors (empty: none)."""
    arm_labels: dict[str, str] = field(default_factory=dict)
    """Arm name -> its label, for defined arms that have one."""
    jobs: int = 1
    """Jobs that ran at once (stage times then overlapped)."""
    config: dict = field(default_factory=dict)
    """The whole config as written, for the report's Configuration section."""
    pressure: dict = field(default_factory=dict)
    """Per narrow pressure, its fine-tune's settings (recipes/pressure.training_facts; empty: no pressure)."""
    notes: list[str] = field(default_factory=list)
    """Notes the report states at its top (e.g. runs merged although they differ in more than seeds)."""
