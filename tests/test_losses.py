"""Outer loss, upper bound and step weights against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from nem_lightning.losses import (
    inter_loss,
    intra_loss,
    next_frame_loss,
    outer_loss,
    step_weights,
    upper_bound_by_change,
    upper_bound_loss,
    upper_bound_per_step,
    upper_bound_step,
)


def _one_pixel(values):
    return torch.tensor(values).view(1, len(values), 1, 1, 1)  # (B=1, K, C, H, W)


def test_bernoulli_outer_loss_matches_hand_computation():
    """L = sum gamma BCE(psi, x) + w_inter sum (1 - gamma)(-log(1 - psi)) for one pixel, K = 2."""
    psi, gamma = _one_pixel([0.8, 0.3]), _one_pixel([0.6, 0.4])
    target = torch.ones(1, 1, 1, 1, 1, 1)  # (B, T, 1, C, H, W)
    loss = outer_loss([psi], [gamma], target, "bernoulli", [1.0], w_inter=0.5)
    intra = 0.6 * -math.log(0.8) + 0.4 * -math.log(0.3)
    inter = 0.4 * -math.log(0.2) + 0.6 * -math.log(0.7)
    assert loss.intra.item() == pytest.approx(intra, rel=1e-6)
    assert loss.inter.item() == pytest.approx(inter, rel=1e-6)
    assert loss.total.item() == pytest.approx(intra + 0.5 * inter, rel=1e-6)


def test_gaussian_outer_loss_matches_hand_computation():
    """Gaussian: intra 0.5 (psi - x)^2, inter 0.5 psi^2 (prior mean 0)."""
    psi, gamma = _one_pixel([0.8, 0.3]), _one_pixel([0.6, 0.4])
    target = torch.full((1, 1, 1, 1, 1, 1), 0.5)
    loss = outer_loss([psi], [gamma], target, "gaussian", [1.0], w_inter=0.2)
    intra = 0.6 * 0.5 * 0.3**2 + 0.4 * 0.5 * 0.2**2
    inter = 0.4 * 0.5 * 0.8**2 + 0.6 * 0.5 * 0.3**2
    assert loss.total.item() == pytest.approx(intra + 0.2 * inter, rel=1e-6)


def test_loss_sums_pixels_and_weighted_steps_and_averages_the_batch():
    """Sum over pixels and K, mean over B, weighted sum over steps (not normalised)."""
    B, T = 3, 2
    preds = [torch.full((B, 2, 1, 2, 2), 0.5) for _ in range(T)]
    gammas = [torch.full((B, 2, 1, 2, 2), 0.5) for _ in range(T)]
    target = torch.ones(B, T, 1, 1, 2, 2)
    per_step = 4 * 2 * 0.5 * math.log(2)  # 4 pixels, 2 components, gamma 0.5, BCE log 2
    loss = outer_loss(preds, gammas, target, "bernoulli", [2.0, 3.0], w_inter=0.0)
    assert loss.total.item() == pytest.approx(5.0 * per_step, rel=1e-6)


def test_bernoulli_terms_are_clipped_to_finite_values():
    """psi = 0 or 1 gives finite losses, capped at -log(1e-6)."""
    psi = torch.tensor([0.0, 1.0])
    assert torch.isfinite(intra_loss(psi, torch.tensor([1.0, 0.0]), "bernoulli")).all()
    assert inter_loss(torch.tensor([1.0]), "bernoulli").item() == pytest.approx(-math.log(1e-6), rel=1e-3)


def test_gamma_gradient_flag_controls_gradient_into_gamma():
    """gradient_gamma=False leaves gamma without gradient from the loss."""
    psi, target = _one_pixel([0.8, 0.3]), torch.ones(1, 1, 1, 1, 1, 1)
    for flag in (True, False):
        gamma = _one_pixel([0.6, 0.4]).requires_grad_()
        loss = outer_loss([psi], [gamma], target, "bernoulli", [1.0], gradient_gamma=flag)
        if flag:
            (grad,) = torch.autograd.grad(loss.total, gamma)
            assert grad.abs().sum() > 0
        else:
            assert not loss.total.requires_grad


def test_step_weights_last_all_and_list():
    """'last' weighs only the final step, 'all' every step, a list is taken as given."""
    assert step_weights("last", 3) == [0.0, 0.0, 1.0]
    assert step_weights("all", 3) == [1.0, 1.0, 1.0]
    assert step_weights([0.5, 1, 2], 3) == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="expected one per step"):
        step_weights([1.0, 2.0], 3)


def test_upper_bound_uses_the_pixelwise_max_over_components():
    """Upper bound = BCE of max_k psi against the target, ignoring gamma."""
    preds = torch.tensor([0.3, 0.9, 0.6]).view(1, 1, 3, 1, 1, 1)  # (B, T, K, C, H, W)
    target = torch.ones(1, 1, 1, 1, 1, 1)
    assert upper_bound_loss(list(preds.unbind(1)), target, "bernoulli", [1.0]).item() == pytest.approx(
        -math.log(0.9), rel=1e-6
    )


def test_next_frame_loss_weighs_new_predictions_by_the_previous_gamma():
    """Step t predicts frame t+1 with gamma_{t-1} . psi_t; the loss averages steps 1..T-1."""
    g0, g1 = _one_pixel([1.0, 0.0]), _one_pixel([0.0, 1.0])
    p0, p1, p2 = _one_pixel([0.1, 0.1]), _one_pixel([0.8, 0.3]), _one_pixel([0.6, 0.9])
    targets = torch.ones(1, 3, 1, 1, 1, 1)
    value = next_frame_loss([p0, p1, p2], [g0, g1, g1], targets, "bernoulli")
    assert value.item() == pytest.approx((-math.log(0.8) - math.log(0.9)) / 2, rel=1e-6)


# Two samples, K = 2, 2x2 pixels, two steps: psi[b][k] and the clean next frame target[b] of step 0.
STEP0_PSI = [
    [[[0.2, 0.7], [0.9, 0.1]], [[0.6, 0.3], [0.4, 0.05]]],
    [[[0.5, 0.5], [0.5, 0.5]], [[0.8, 0.2], [0.0, 1.0]]],  # psi = 1 against 0 is clipped to 1 - 1e-6
]
STEP0_TARGET = [[[1, 1], [0, 0]], [[0, 1], [0, 0]]]


def _by_hand_upper_bound(psi, target, pixel_loss):
    """Per sample: sum over pixels of pixel_loss(max_k psi, x); then the mean over samples, in plain Python."""
    per_sample = []
    for psi_b, target_b in zip(psi, target):
        total = 0.0
        for i in range(2):
            for j in range(2):
                total += pixel_loss(max(psi_k[i][j] for psi_k in psi_b), target_b[i][j])
        per_sample.append(total)
    return sum(per_sample) / len(per_sample)


def _bce(p, x):
    p = min(max(p, 1e-6), 1 - 1e-6)
    return -(x * math.log(p) + (1 - x) * math.log(1 - p))


def _steps(psi_steps, target_steps):
    """Lists of nested Python values to the unroll's layout: T x (B, K, C, H, W) and (B, T, 1, C, H, W).

    float64, so the clip at 1 - 1e-6 is exact (in float32 it rounds to 1 - 1.013e-6, capping at 13.80, as the
    original's float32 clip did).
    """
    preds = [torch.tensor(psi, dtype=torch.float64).unsqueeze(2) for psi in psi_steps]
    targets = torch.tensor(target_steps, dtype=torch.float64).transpose(0, 1)[:, :, None, None]
    return preds, targets


def test_upper_bound_last_and_mean_match_a_hand_computation():
    """Last step and unweighted step mean of BCE(max_k psi, next frame), summed over pixels, mean over samples."""
    step1_psi = [[[[0.5] * 2] * 2] * 2] * 2  # every pixel 0.5: log 2 per pixel whatever the target
    step1_target = [[[0, 1], [1, 0]], [[1, 1], [1, 1]]]
    preds, targets = _steps([STEP0_PSI, step1_psi], [STEP0_TARGET, step1_target])
    step0 = (
        -math.log(0.6) - math.log(0.7) - math.log(0.1) - math.log(0.9)  # sample 0: maxima 0.6, 0.7 / 0.9, 0.1
        - math.log(0.2) - math.log(0.5) - math.log(0.5) - math.log(1e-6)  # sample 1: maxima 0.8, 0.5 / 0.5, 1.0
    ) / 2  # fmt: skip
    assert _by_hand_upper_bound(STEP0_PSI, STEP0_TARGET, _bce) == pytest.approx(step0)
    step1 = 4 * math.log(2)
    per_step = upper_bound_per_step(preds, targets, "bernoulli")
    assert per_step.shape == (2,)
    assert per_step[-1].item() == pytest.approx(step1, rel=1e-10)  # the original's "loss UB last"
    assert per_step.mean().item() == pytest.approx((step0 + step1) / 2, rel=1e-10)
    # the step-weighted sum logged as upper_bound is built from the same steps
    assert upper_bound_loss(preds, targets, "bernoulli", [1.0, 1.0]).item() == pytest.approx(step0 + step1, rel=1e-10)


def test_gaussian_upper_bound_is_half_the_squared_error_of_the_max():
    """Gaussian pixels: 0.5 (max_k psi - x)^2, the original's unit-variance error (its log-sigma term is 0)."""
    target = [[[0.5, 1.0], [0.0, 0.25]], [[1.0, 1.0], [0.0, 0.0]]]
    preds, targets = _steps([STEP0_PSI], [target])
    expected = _by_hand_upper_bound(STEP0_PSI, target, lambda p, x: 0.5 * (p - x) ** 2)
    assert upper_bound_per_step(preds, targets, "gaussian")[-1].item() == pytest.approx(expected, rel=1e-6)


def test_with_one_component_the_upper_bound_is_the_plain_bce_of_the_prediction():
    """K = 1: the max over components is the prediction itself, so the bound is its BCE against the next frame."""
    rng = np.random.default_rng(0)
    B, T = 3, 4
    psi = rng.uniform(0.01, 0.99, size=(B, T, 1, 1, 5, 5))  # (B, T, K=1, C, H, W), away from the clip
    frames = (rng.uniform(size=(B, T, 1, 1, 5, 5)) < 0.3).astype(np.float64)  # (B, T, 1, C, H, W)
    bce = -(frames * np.log(psi) + (1 - frames) * np.log(1 - psi))
    expected = bce.reshape(B, T, -1).sum(-1).mean(0)  # (T,): summed over pixels, mean over samples
    preds = [torch.from_numpy(psi[:, t]) for t in range(T)]
    per_step = upper_bound_per_step(preds, torch.from_numpy(frames), "bernoulli")
    np.testing.assert_allclose(per_step.numpy(), expected, rtol=1e-10)


def test_the_last_step_bound_splits_by_pixel_change_into_parts_that_sum_to_it():
    """One sample, four pixels, one of each change: each part is that pixel's BCE of max_k psi."""
    frame = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # (B, C, H, W): the frame the step read
    target = torch.tensor([[[[[1.0, 1.0], [0.0, 0.0]]]]])  # (B, 1, C, H, W): kept on, appeared / vanished, kept off
    psi = torch.tensor([[[[[0.9, 0.2], [0.3, 0.05]]], [[[0.1, 0.6], [0.1, 0.4]]]]])  # (B, K=2, C, H, W)
    parts = upper_bound_by_change(psi, frame, target, "bernoulli")  # maxima 0.9, 0.6 / 0.3, 0.4
    expected = {
        "kept_on": -math.log(0.9),
        "appeared": -math.log(0.6),
        "vanished": -math.log(0.7),
        "kept_off": -math.log(0.6),
    }
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(expected, rel=1e-6)
    rng = torch.Generator().manual_seed(0)
    psi, frame = torch.rand(3, 2, 1, 5, 5, generator=rng), (torch.rand(3, 1, 5, 5, generator=rng) < 0.4).float()
    target = (torch.rand(3, 1, 1, 5, 5, generator=rng) < 0.4).float()
    total = upper_bound_step(psi, target, "bernoulli")
    assert sum(upper_bound_by_change(psi, frame, target, "bernoulli").values()).item() == pytest.approx(total.item())
