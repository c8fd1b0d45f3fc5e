"""Every shipped config loads, validates, and names families that exist."""

from pathlib import Path

import pytest

from coherentize.commands.run import default_config_path
from coherentize.config import from_dict, read_config_file
from coherentize.evaluate.jailbreak import template_families
from coherentize.recipes.experiment import ExperimentConfig, validate
from coherentize.recipes.train_job import TrainJob
from coherentize.variations import families_by_name

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [Path(default_config_path())]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path):
    data = read_config_file(path)
    if path.name == "train.yaml":
        from_dict(TrainJob, data, str(path))
        return
    cfg = from_dict(ExperimentConfig, data, str(path))
    validate(cfg)
    families_by_name(cfg.variations.families)
    named = cfg.eval.jailbreak_families + cfg.variations.jailbreak_families
    if named:
        found = template_families(cfg.eval.jailbreak_sources, named)
        assert set(found) == set(named)
