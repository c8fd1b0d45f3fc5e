"""Moved to evaluate/mining.py (the run of ``coherentize mine`` to recipes/mine.py). This alias keeps the one import
left in recipes/experiment_data.py working until that file imports from coherentize.evaluate.mining; then delete it."""

from coherentize.evaluate.mining import mine_clusters, random_clusters, top_clusters  # noqa: F401
