"""Outer loss, upper bound and step weights against hand-computed values."""

import math

import pytest
import torch

from nem_lightning.losses import inter_loss, intra_loss, outer_loss, step_weights, upper_bound_loss


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
    from nem_lightning.losses import next_frame_loss

    value = next_frame_loss([p0, p1, p2], [g0, g1, g1], targets, "bernoulli")
    assert value.item() == pytest.approx((-math.log(0.8) - math.log(0.9)) / 2, rel=1e-6)
