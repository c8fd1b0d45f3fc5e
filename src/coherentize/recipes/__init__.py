"""Recipes: end-to-end jobs built on the library (training job, model organism and its SFT, the staged experiment).

The library (clusters, variations, collate, losses, trainer, evaluate, report) never imports from here.
"""
