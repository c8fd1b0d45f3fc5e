"""coherentize: consistency training for language models.

The path of the data is the layout:
prompt clusters (clusters.py) -> variations (variations/) -> batches (collate.py) -> losses (losses.py)
-> trainer (trainer.py) -> evaluation (evaluate/) -> report (report/).

The Python API (README, "Python API"; examples/python_api.py) is importable from here; names load on first use,
so ``import coherentize`` stays fast (no torch or transformers until a name needs them).
"""

from __future__ import annotations

import importlib

from coherentize.errors import CoherentizeError

__version__ = "0.1.0"

_LAZY = {
    # clusters and their variations
    "Cluster": "coherentize.clusters", "Variation": "coherentize.clusters", "load_clusters": "coherentize.clusters",
    "write_clusters": "coherentize.clusters",
    "families_by_name": "coherentize.variations", "vary": "coherentize.variations",
    "load_prompt_set": "coherentize.variations", "augment": "coherentize.variations",
    "build_clusters": "coherentize.variations.build",
    # models and generation
    "ModelConfig": "coherentize.models", "load_model": "coherentize.models", "generate": "coherentize.generation",
    # training
    "Example": "coherentize.collate", "build_examples": "coherentize.collate",
    "ConsistencyCollator": "coherentize.collate", "examples_dataset": "coherentize.dataset",
    "clusters_from_dataset": "coherentize.dataset",
    "ConsistencyConfig": "coherentize.trainer", "ConsistencyTrainer": "coherentize.trainer",
    # evaluation
    "EvalConfig": "coherentize.evaluate", "run_suite": "coherentize.evaluate", "write_results": "coherentize.evaluate",
    "read_results": "coherentize.evaluate",
}

__all__ = ["CoherentizeError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'coherentize' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
