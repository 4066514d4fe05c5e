"""Grouping metrics for Neural EM: per-image AMI, ARI and confidence, batched on the device.

- ``functional.py``: the functional forms, returning per-image values and a mask of the images that had
  scored pixels (``adjusted_mutual_info``, ``adjusted_rand_index``, ``grouping_confidence``, and
  ``grouping_scores`` for all three in one pass), with the contingency tables and the exact expected mutual
  information behind them.
- ``grouping.py``: the torchmetrics ``Metric`` classes, which average those per-image values over images
  (``AdjustedMutualInfo``, ``AdjustedRandIndex``, ``GroupingConfidence``) and per unrolled step
  (``SequenceGroupingMetrics``), DDP-safe.
"""

from nem_lightning.metrics.functional import (
    AverageMethod,
    adjusted_mutual_info,
    adjusted_rand_index,
    grouping_confidence,
    grouping_scores,
)
from nem_lightning.metrics.grouping import (
    AdjustedMutualInfo,
    AdjustedRandIndex,
    GroupingConfidence,
    SequenceGroupingMetrics,
)

__all__ = [
    "AdjustedMutualInfo",
    "AdjustedRandIndex",
    "AverageMethod",
    "GroupingConfidence",
    "SequenceGroupingMetrics",
    "adjusted_mutual_info",
    "adjusted_rand_index",
    "grouping_confidence",
    "grouping_scores",
]
