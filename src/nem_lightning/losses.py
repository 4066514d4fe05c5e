"""The N-EM outer loss and the logged upper-bound and next-frame losses.

Per step: ``L_t = sum(gamma * intra) + w_inter * sum((1 - gamma) * inter)``, summed over K and pixels
and averaged over the batch; total ``L = sum_t w_t L_t`` (not normalised). The intra term pulls the
responsible component towards the target; the inter term pushes the others towards a prior
(Bernoulli p = 0, Gaussian mean 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Union

import torch
from torch import Tensor

from nem_lightning.em import Distribution

PSI_CLIP = 1e-6  # predictions are clipped to [1e-6, 1 - 1e-6] before taking logs
StepWeights = Union[Literal["last", "all"], list[float]]


def step_weights(weights: StepWeights | Sequence[float], steps: int) -> list[float]:
    """Loss weight of each EM step: ``last`` (only the final step), ``all`` (every step), or a list."""
    if weights == "last":
        return [0.0] * (steps - 1) + [1.0]
    if weights == "all":
        return [1.0] * steps
    weights = [float(w) for w in weights]
    if len(weights) != steps:
        raise ValueError(f"model.step_weights has {len(weights)} entries, expected one per step ({steps})")
    return weights


def intra_loss(psi: Tensor, target: Tensor, distribution: Distribution) -> Tensor:
    """Pixelwise reconstruction loss: BCE(psi, x) or 0.5 (psi - x)^2."""
    if distribution == "bernoulli":
        psi = psi.clamp(PSI_CLIP, 1.0 - PSI_CLIP)
        return -(target * torch.log(psi) + (1.0 - target) * torch.log1p(-psi))
    return 0.5 * (psi - target) ** 2


def inter_loss(psi: Tensor, distribution: Distribution) -> Tensor:
    """Pixelwise distance to the prior: KL(Bern(0) || Bern(psi)) = -log(1 - psi), or 0.5 psi^2."""
    if distribution == "bernoulli":
        return -torch.log1p(-psi.clamp(PSI_CLIP, 1.0 - PSI_CLIP))  # capped at log(1e6)
    return 0.5 * psi**2


class OuterLoss(NamedTuple):
    """Weighted totals (scalars) of the outer loss and its two terms."""

    total: Tensor
    intra: Tensor
    inter: Tensor


def outer_loss(
    preds: Sequence[Tensor],
    gammas: Sequence[Tensor],
    targets: Tensor,
    distribution: Distribution,
    weights: Sequence[float],
    w_inter: float = 1.0,
    gradient_gamma: bool = True,
) -> OuterLoss:
    """The training loss, computed only on steps with non-zero weight.

    Args:
        preds: T tensors (B, K, C, H, W), the per-component predictions psi of each step.
        gammas: T tensors (B, K, 1, H, W), the responsibilities of each step.
        targets: (B, T, 1, C, H, W) clean targets.
        distribution: ``bernoulli`` or ``gaussian``.
        weights: T step weights (see :func:`step_weights`).
        w_inter: weight of the inter-component term.
        gradient_gamma: False stops gradients through gamma in the loss.
    """
    B = targets.shape[0]
    intra = inter = targets.new_zeros(())
    for t, w in enumerate(weights):
        if w == 0.0:
            continue
        psi, gamma = preds[t], gammas[t] if gradient_gamma else gammas[t].detach()
        intra = intra + w * (gamma * intra_loss(psi, targets[:, t], distribution)).sum() / B
        inter = inter + w * ((1.0 - gamma) * inter_loss(psi, distribution)).sum() / B
    return OuterLoss(intra + w_inter * inter, intra, inter)


def upper_bound_step(psi: Tensor, target: Tensor, distribution: Distribution) -> Tensor:
    """One step's reconstruction loss of the pixelwise max over components, per sample summed, batch mean.

    The max over K ignores gamma, so at a video step (psi computed from frame t, target frame t + 1) this is
    a genuine next-step prediction error: BCE for Bernoulli pixels (psi clipped as in :func:`intra_loss`),
    0.5 squared error for Gaussian ones (the original's unit-variance Gaussian error, whose log-sigma term is 0).

    Args:
        psi: (B, K, C, H, W) predictions; target: (B, 1, C, H, W).
    """
    return _max_error(psi, target, distribution).sum() / target.shape[0]


def _max_error(psi: Tensor, target: Tensor, distribution: Distribution) -> Tensor:
    """Per-pixel reconstruction loss of the pixelwise max over components: (B, C, H, W)."""
    return intra_loss(psi.max(1).values, target[:, 0], distribution)


def upper_bound_loss(
    preds: Sequence[Tensor], targets: Tensor, distribution: Distribution, weights: Sequence[float]
) -> Tensor:
    """Reconstruction loss of the pixelwise max over components (ignores the E-step), step-weighted.

    Only steps with non-zero weight are computed, like :func:`outer_loss`, so the training step does
    not stack every step's predictions just to log this.

    Args:
        preds: T tensors (B, K, C, H, W); targets: (B, T, 1, C, H, W).
    """
    total = targets.new_zeros(())
    for t, w in enumerate(weights):
        if w != 0.0:
            total = total + w * upper_bound_step(preds[t], targets[:, t], distribution)
    return total


def upper_bound_per_step(preds: Sequence[Tensor], targets: Tensor, distribution: Distribution) -> Tensor:
    """:func:`upper_bound_step` at every step, unweighted: (T,).

    Its last entry is what the original prints as "loss UB last" (its next-step prediction error on video).

    Args:
        preds: T tensors (B, K, C, H, W); targets: (B, T, 1, C, H, W).
    """
    return torch.stack([upper_bound_step(psi, targets[:, t], distribution) for t, psi in enumerate(preds)])


PIXEL_CHANGES = ("kept_on", "appeared", "vanished", "kept_off")


def upper_bound_by_change(psi: Tensor, frame: Tensor, target: Tensor, distribution: Distribution) -> dict[str, Tensor]:
    """:func:`upper_bound_step` split by how each pixel changes from the frame the step read to its target.

    A pixel is on where it is brighter than 0.5. ``kept_on``: on in both frames (an object's inside);
    ``appeared``: off, then on (where an object moves to); ``vanished``: on, then off (where it leaves);
    ``kept_off``: background in both. The four parts sum to :func:`upper_bound_step`, so they show whether a
    next-step error comes from the motion (appeared, vanished) or from how sharply objects are drawn at all.

    Args:
        psi: (B, K, C, H, W) predictions; frame: (B, C, H, W) the clean frame the step read; target: (B, 1, C, H, W).
    """
    error = _max_error(psi, target, distribution)
    was, now = frame > 0.5, target[:, 0] > 0.5
    masks = (was & now, ~was & now, was & ~now, ~was & ~now)
    return {name: (error * m).sum() / target.shape[0] for name, m in zip(PIXEL_CHANGES, masks)}


def next_frame_loss(
    preds: Sequence[Tensor], gammas: Sequence[Tensor], targets: Tensor, distribution: Distribution
) -> Tensor:
    """Loss of the next-frame prediction made before the frame is seen, averaged over steps 1..T-1.

    At step t the model predicts frame t + 1 as ``sum_k gamma_{t-1,k} psi_{t,k}``: the responsibilities
    of the previous E-step weigh the components' new predictions (the current gamma has already seen
    frame t + 1). With K = 1 this is a plain RNN's prediction. BCE for Bernoulli pixels, 0.5 squared
    error for Gaussian ones; summed over pixels, averaged over the batch.

    Args:
        preds: T tensors (B, K, C, H, W); gammas: T tensors (B, K, 1, H, W); targets: (B, T, 1, C, H, W).
    """
    B, T = targets.shape[:2]
    if T < 2:
        raise ValueError("the next-frame loss needs at least 2 EM steps")
    total = targets.new_zeros(())
    for t in range(1, T):
        mix = (gammas[t - 1] * preds[t]).sum(1)  # (B, C, H, W)
        total = total + intra_loss(mix, targets[:, t, 0], distribution).sum() / B
    return total / (T - 1)
