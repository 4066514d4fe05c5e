"""Grouping metric classes (torchmetrics ``Metric``): per-image scores averaged over images.

The classes only keep float64 sums and integer counts, all reduced by sum under DDP; the scores come from
the functional forms in ``functional.py``. Images without scored pixels are left out of every mean and
counted in the ``skipped`` state; results are never NaN (a mean over no images reads 0).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from nem_lightning.metrics.functional import (
    AverageMethod,
    _ami_compute,
    _ari_compute,
    _check_average_method,
    _grouping_update,
    grouping_confidence,
    grouping_scores,
)


class _ImageMean(Metric):
    """Means of per-image scores over the images that had scored pixels; others are counted in ``skipped``.

    Keeps one float64 sum per name in ``sums`` and the counts ``count`` (valid images) and ``skipped``:
    scalars, or one entry per step with ``num_steps``.
    """

    is_differentiable = False
    higher_is_better: bool | None = True
    full_state_update = False

    def __init__(self, sums: tuple[str, ...] = ("total",), num_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        shape = () if num_steps is None else (num_steps,)
        for name in sums:
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, valid: Tensor, **scores: Tensor) -> None:
        """Add per-image scores and validity, (B,) or (B, num_steps); invalid images hold 0."""
        for name, value in scores.items():
            getattr(self, name).add_(value.sum(0))
        self.count += valid.sum(0)
        self.skipped += (~valid).sum(0)

    def _mean(self, name: str) -> Tensor:
        """Mean of one score over valid images (0 where there were none), float64."""
        return torch.where(self.count > 0, getattr(self, name) / self.count.clamp(min=1), 0.0)

    def compute(self) -> Tensor:
        """Mean over valid images (0 if there were none), float64 scalar."""
        return self._mean("total")


class AdjustedMutualInfo(_ImageMean):
    """AMI per image, averaged over images (the paper's score with the default ``max`` normaliser).

    Args:
        average_method: entropy normaliser: max, arithmetic, geometric or min.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        num_labels: static bound on true labels; ``None`` reads it from each batch (one sync per update).
    """

    def __init__(
        self,
        average_method: AverageMethod = "max",
        ignore_index: int | None = 0,
        num_labels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_average_method(average_method)
        self.average_method, self.ignore_index, self.num_labels = average_method, ignore_index, num_labels

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: preds gamma (B, K, *spatial) or labels (B, *spatial); target (B, *spatial)."""
        counts, n_max = _grouping_update(preds, target, self.ignore_index, self.num_labels)
        ami, valid = _ami_compute(counts, n_max, self.average_method)
        self._accumulate(valid, total=ami)


class AdjustedRandIndex(_ImageMean):
    """ARI per image (foreground ARI through ``ignore_index``), averaged over images.

    Args:
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        num_labels: static bound on true labels; ``None`` reads it from each batch (one sync per update).
    """

    def __init__(self, ignore_index: int | None = 0, num_labels: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index, self.num_labels = ignore_index, num_labels

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: preds gamma (B, K, *spatial) or labels (B, *spatial); target (B, *spatial)."""
        ari, valid = _ari_compute(_grouping_update(preds, target, self.ignore_index, self.num_labels)[0])
        self._accumulate(valid, total=ari)


class GroupingConfidence(_ImageMean):
    """Mean over scored pixels of max_k gamma, per image, averaged over images.

    Args:
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
    """

    higher_is_better = None  # confident is not the same as right

    def __init__(self, ignore_index: int | None = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index

    def update(self, gamma: Tensor, target: Tensor) -> None:
        """Add a batch: gamma (B, K, *spatial); target (B, *spatial)."""
        confidence, valid = grouping_confidence(gamma, target, ignore_index=self.ignore_index)
        self._accumulate(valid, total=confidence)


class SequenceGroupingMetrics(_ImageMean):
    """AMI, ARI and confidence per unrolled step, plus the step-weighted mean the paper reports.

    Time is folded into the batch, so one ``grouping_scores`` pass scores every (sequence, step) image; the
    per-step sums and counts are those of the single-image metrics with one entry per step. Pass the steps
    to score (the paper's t = 1..T; the random initial gamma is not scored). Per-step values are means over
    the images valid at that step; a step with none reads 0.

    Args:
        num_steps: T, the number of scored steps per sequence.
        step_weights: "last" (static data: the final step) or "all" (video: mean of the per-step means).
        average_method: AMI entropy normaliser: max, arithmetic, geometric or min.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        num_labels: static bound on true labels; ``None`` reads it from each batch (one sync per update).
    """

    _SCORES = ("ami", "ari", "confidence")

    def __init__(
        self,
        num_steps: int,
        step_weights: Literal["last", "all"] = "last",
        average_method: AverageMethod = "max",
        ignore_index: int | None = 0,
        num_labels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sums=tuple(f"{name}_sum" for name in self._SCORES), num_steps=num_steps, **kwargs)
        if step_weights not in ("last", "all"):
            raise ValueError(f"step_weights must be 'last' or 'all', got {step_weights!r}")
        _check_average_method(average_method)
        self.num_steps, self.step_weights, self.average_method = num_steps, step_weights, average_method
        self.ignore_index, self.num_labels = ignore_index, num_labels

    def update(self, gamma: Tensor, groups: Tensor) -> None:
        """Add a batch: gamma (B, T, K, *spatial); groups (B, T, *spatial) or (B, 1, *spatial) for static data."""
        B, T = gamma.shape[:2]
        if T != self.num_steps or groups.shape[1] not in (1, T):
            shapes = f"gamma {tuple(gamma.shape)}, groups {tuple(groups.shape)}"
            raise ValueError(f"expected {self.num_steps} steps (groups: {self.num_steps} or 1): {shapes}")
        g = gamma.flatten(0, 1)  # (B*T, K, *spatial)
        y = groups.expand(B, T, *groups.shape[2:]).flatten(0, 1)  # (B*T, *spatial)
        scores, valid = grouping_scores(
            g, y, ignore_index=self.ignore_index, average_method=self.average_method, num_labels=self.num_labels
        )
        self._accumulate(valid.view(B, T), **{f"{name}_sum": value.view(B, T) for name, value in scores.items()})

    def compute(self) -> dict[str, Tensor]:
        """Scalars ami, ari, confidence (step-weighted) and their *_last; curves *_per_step (T,); images.

        ``images`` is the number of images scored per step (valid or skipped), over all processes, float32.
        """
        out: dict[str, Tensor] = {}
        for name in self._SCORES:
            per_step = self._mean(f"{name}_sum")
            out[name] = per_step[-1] if self.step_weights == "last" else per_step.mean()
            out[f"{name}_last"] = per_step[-1]
            out[f"{name}_per_step"] = per_step
        out["images"] = (self.count[-1] + self.skipped[-1]).float()  # states are synced inside compute
        return out
