"""coherentize: consistency training for language models.

The path of the data is the layout:
prompt clusters (clusters.py) -> variations (variations/) -> batches (collate.py) -> losses (losses.py)
-> trainer (trainer.py) -> evaluation (evaluate/) -> report (report.py).
"""

from coherentize.errors import CoherentizeError

__version__ = "0.1.0"
__all__ = ["CoherentizeError", "__version__"]
