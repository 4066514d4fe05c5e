"""The EM core: noise, gamma initialisation, E-step, cells and the unroll."""

import math

import pytest
import torch
from torch import nn

from nem_lightning.cells import NEMCell, RNNEMCell
from nem_lightning.em import NeuralEM, bitflip, e_step, init_gamma, masked_uniform
from nem_lightning.losses import outer_loss, step_weights
from nem_lightning.networks import build_cell


def test_bernoulli_e_step_matches_hand_computation():
    """gamma_k = (lik_k + 1e-6) / sum_j (lik_j + 1e-6) with lik = x psi + (1 - x)(1 - psi)."""
    psi = torch.tensor([0.8, 0.2, 0.5]).view(1, 3, 1, 1, 1)
    for x, liks in ((1.0, [0.8, 0.2, 0.5]), (0.0, [0.2, 0.8, 0.5])):
        gamma = e_step(psi, torch.full((1, 1, 1, 1, 1), x), "bernoulli")
        p = [lik + 1e-6 for lik in liks]
        assert gamma.flatten().tolist() == pytest.approx([v / sum(p) for v in p], rel=1e-6)


def test_gaussian_e_step_uses_e_sigma_as_temperature():
    """Gaussian gamma equals normalised N(x; psi, e_sigma) densities (plus epsilon)."""
    psi = torch.tensor([0.1, 0.6]).view(1, 2, 1, 1, 1)
    x, sigma = 0.5, 0.25
    gamma = e_step(psi, torch.full((1, 1, 1, 1, 1), x), "gaussian", e_sigma=sigma)
    dens = [math.exp(-((x - m) ** 2) / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2) + 1e-6 for m in (0.1, 0.6)]
    assert gamma.flatten().tolist() == pytest.approx([d / sum(dens) for d in dens], rel=1e-5)


def test_e_step_sums_likelihoods_over_channels():
    """With C > 1 the per-pixel likelihood is the sum over channels, and gamma has one channel."""
    psi = torch.tensor([[0.9, 0.9], [0.1, 0.4]]).view(1, 2, 2, 1, 1)  # (B, K, C, H, W)
    gamma = e_step(psi, torch.ones(1, 1, 2, 1, 1), "bernoulli")
    assert gamma.shape == (1, 2, 1, 1, 1)
    p = [1.8 + 1e-6, 0.5 + 1e-6]
    assert gamma.flatten().tolist() == pytest.approx([v / sum(p) for v in p], rel=1e-6)


def test_bitflip_flips_at_the_given_rate():
    """p = 0 keeps, p = 1 inverts, p = 0.1 flips about 10% of the pixels."""
    x = (torch.rand(200, 200) < 0.3).float()
    assert torch.equal(bitflip(x, 0.0), x)
    assert torch.equal(bitflip(x, 1.0), 1 - x)
    assert (bitflip(x, 0.1) != x).float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_masked_uniform_replaces_pixels_with_uniform_noise():
    """p = 0 keeps the input; p = 1 replaces every pixel by a value in [0, 1] with mean 1/2."""
    x = torch.full((200, 200), 0.25)
    assert torch.equal(masked_uniform(x, 0.0), x)
    y = masked_uniform(x, 1.0)
    assert y.min() >= 0 and y.max() <= 1 and y.mean().item() == pytest.approx(0.5, abs=0.01)
    assert (masked_uniform(x, 0.2) != x).float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_init_gamma_is_normalised_and_all_ones_for_one_component():
    """Initial gamma is non-negative and sums to one over K; K = 1 gives all ones."""
    like = torch.zeros(1)
    gamma = init_gamma(3, 4, (5, 6), like)
    assert gamma.shape == (3, 4, 1, 5, 6) and (gamma >= 0).all()
    torch.testing.assert_close(gamma.sum(1), torch.ones(3, 1, 5, 6))
    assert torch.equal(init_gamma(2, 1, (5, 6), like), torch.ones(2, 1, 1, 5, 6))


def test_rnn_em_state_is_sigmoid_of_preactivation_and_decoder_reads_layer_norm():
    """h = sigmoid(a); the decoder input is sigmoid(LN(a)) with layer norm, else h."""
    torch.manual_seed(0)
    seen = []
    decoder = nn.Sequential(nn.Identity())
    decoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    for layer_norm in (True, False):
        cell = RNNEMCell(nn.Flatten(), 4, 3, decoder, layer_norm)
        if layer_norm:
            nn.init.normal_(cell.norm.weight)
            nn.init.normal_(cell.norm.bias)
        delta, h0 = torch.randn(2, 1, 2, 2), torch.rand(2, 3)
        _, h = cell(delta, h0)
        a = (
            delta.flatten(1) @ cell.input_weights.weight.t()
            + cell.input_weights.bias
            + h0 @ cell.recurrent_weights.weight.t()
        )
        torch.testing.assert_close(h, torch.sigmoid(a))
        expected = torch.sigmoid(cell.norm(a)) if layer_norm else torch.sigmoid(a)
        torch.testing.assert_close(seen[-1], expected)


def test_n_em_update_is_one_gradient_ascent_step():
    """N-EM's z' equals z + eta * d/dz sum(gamma * log p(x | psi(z))) for Bernoulli pixels."""
    torch.manual_seed(0)
    cell = NEMCell((1, 3, 3), hidden_size=5, step_size=0.7)
    z = torch.randn(4, 5, requires_grad=True)
    x = (torch.rand(4, 1, 3, 3) < 0.5).float()
    gamma = torch.rand(4, 1, 3, 3)
    psi = cell.decode(z)
    loglik = (gamma * (x * torch.log(psi) + (1 - x) * torch.log(1 - psi))).sum()
    (grad,) = torch.autograd.grad(loglik, z)
    new_z, new_psi = cell((gamma * (x - psi)).detach(), z.detach())[::-1]
    torch.testing.assert_close(new_z, z.detach() + 0.7 * grad)
    torch.testing.assert_close(new_psi, cell.decode(new_z))


def test_n_em_decoder_uses_tied_transposed_weights():
    """psi = sigmoid(sigmoid(z) @ W^T): the only weights are W (D x H) and the step size."""
    cell = NEMCell((1, 2, 2), hidden_size=3)
    assert {n: tuple(p.shape) for n, p in cell.named_parameters()} == {"weight": (4, 3), "step_size": ()}
    z = torch.randn(2, 3)
    torch.testing.assert_close(cell.decode(z).flatten(1), torch.sigmoid(torch.sigmoid(z) @ cell.weight.t()))


def _tiny_unroll(gradient_gamma: bool, noise: str = "none") -> NeuralEM:
    torch.manual_seed(0)
    cell = build_cell("rnn_em", "fc", (1, 4, 4), 8, False, True)
    return NeuralEM(cell, "bernoulli", noise, 0.5, gradient_gamma=gradient_gamma)


@pytest.mark.parametrize("gradient_gamma", [True, False])
def test_stopping_gamma_gradient_really_stops_it(gradient_gamma):
    """With gradient_gamma off no gradient reaches gamma; with it on, gamma gets a non-zero gradient."""
    em = _tiny_unroll(gradient_gamma)
    frames = (torch.rand(3, 1, 1, 4, 4) < 0.5).float()
    out = em(frames, k=2, steps=2)
    out.gammas[0].retain_grad()
    loss = outer_loss(out.preds, out.gammas, out.targets, "bernoulli", step_weights("last", 2), 1.0, gradient_gamma)
    loss.total.backward()
    grad = out.gammas[0].grad
    if gradient_gamma:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None or grad.abs().sum() == 0


def test_static_unroll_scores_every_step_against_the_same_image():
    """Static data (F = 1): every step reads and targets the one image; shapes follow (B, T, K, C, H, W)."""
    em = _tiny_unroll(True)
    frames = (torch.rand(3, 1, 1, 4, 4) < 0.5).float()
    out = em(frames, k=2, steps=5)
    assert len(out.preds) == 5 and out.stacked_preds().shape == (3, 5, 2, 1, 4, 4)
    assert out.stacked_gammas().shape == (3, 5, 2, 1, 4, 4)
    assert torch.equal(out.targets, frames.unsqueeze(2).expand(3, 5, 1, 1, 4, 4))
    assert torch.equal(out.inputs, frames.expand(3, 5, 1, 4, 4))  # noise "none"
    torch.testing.assert_close(out.stacked_gammas().sum(2), torch.ones(3, 5, 1, 4, 4))


def test_video_unroll_reads_frame_t_and_targets_frame_t_plus_one():
    """Video: step t reads frame t and is scored against frame t + 1; extra frames are unused."""
    em = _tiny_unroll(False)
    frames = torch.rand(2, 7, 1, 4, 4).round()
    out = em(frames, k=3, steps=4)
    assert torch.equal(out.inputs, frames[:, :4])
    assert torch.equal(out.targets[:, :, 0], frames[:, 1:5])


def test_noise_is_fresh_at_every_step():
    """Static input gets different bitflip noise at each step."""
    em = _tiny_unroll(True, noise="bitflip")
    out = em(torch.zeros(1, 1, 1, 4, 4), k=2, steps=6)
    assert len({tuple(out.inputs[0, t].flatten().tolist()) for t in range(6)}) > 1


def test_first_step_delta_is_gamma_times_input():
    """The initial prediction is 0, so the first M-step sees gamma * x~."""
    torch.manual_seed(0)
    seen = []
    em = _tiny_unroll(True)
    em.cell.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    frames = torch.ones(1, 1, 1, 4, 4)
    torch.manual_seed(1)
    em(frames, k=2, steps=1)
    torch.manual_seed(1)
    gamma = init_gamma(1, 2, (4, 4), frames)
    torch.testing.assert_close(seen[0], gamma.reshape(2, 1, 4, 4))


def test_sample_draws_do_not_depend_on_batch_mates():
    """A sample's noise and initial gamma are the same alone or inside any batch; other keys differ."""
    from nem_lightning.em import SampleDraws

    torch.manual_seed(0)
    cell = RNNEMCell(
        nn.Flatten(), 16, 8, nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))), False
    )
    em = NeuralEM(cell, noise_prob=0.3)
    frames = (torch.rand(3, 1, 1, 4, 4) < 0.5).float()
    batch = em(frames, 3, 2, SampleDraws([(0, 2, 7), (0, 2, 8), (0, 2, 9)]))
    alone = em(frames[2:], 3, 2, SampleDraws([(0, 2, 9)]))
    torch.testing.assert_close(alone.inputs[0], batch.inputs[2], rtol=0, atol=0)
    torch.testing.assert_close(alone.gammas[-1][0], batch.gammas[-1][2])
    other = em(frames[2:], 3, 2, SampleDraws([(1, 2, 9)]))
    assert not torch.equal(other.inputs[0], alone.inputs[0])
    with pytest.raises(ValueError, match="holds 1 streams, asked for a batch of 3"):
        SampleDraws([(0, 1, 2)]).rand((3, 4), frames)
