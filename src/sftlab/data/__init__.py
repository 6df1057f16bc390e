"""Data: reading, converting, validating, cleaning, rendering, masking and mixing training records.

``build(cfg, tokenizer) -> TrainingData`` is the one entry point of a run (training.py).
"""

from sftlab.data.training import TrainingData, build

__all__ = ["TrainingData", "build"]
