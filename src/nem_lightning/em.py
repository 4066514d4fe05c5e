"""The EM unroll of Neural Expectation Maximization, in plain torch.

One EM step t, for K components that share all weights (so they run as one batch of B*K):

    delta_k = gamma_k * (x~_t - psi_k)         masked error against the corrupted input
    theta_k, psi_k = cell(delta_k, theta_k)    M-step (RNN-EM or N-EM cell, see cells.py)
    gamma_k = p(x_{t+1} | psi_k) / sum_j ...   E-step against the clean target

Static data repeats one image at every step (fresh noise each time); video reads frame t and
predicts frame t+1. Shapes follow the paper: B batch, T steps, K components, (C, H, W) images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

Distribution = Literal["bernoulli", "gaussian"]
Noise = Literal["bitflip", "masked_uniform", "none"]

LIKELIHOOD_EPS = 1e-6  # added to every component's likelihood so no gamma is exactly 0


class SampleDraws:
    """Random numbers drawn from one stream per sample, so a sample's noise and initial gamma do not depend on
    which other samples share its batch, or on how many processes split the data.

    Args:
        keys: one key per sample of the batch, e.g. (seed, split, sample index); each seeds its own stream.
    """

    def __init__(self, keys: Sequence[Sequence[int]]) -> None:
        self.generators = [torch.Generator().manual_seed(_stream_seed(key)) for key in keys]

    def _draw(self, sample: Callable[..., Tensor], shape: Sequence[int], like: Tensor) -> Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"SampleDraws holds {len(self.generators)} streams, asked for a batch of {shape[0]}")
        draws = torch.stack([sample(tuple(shape[1:]), generator=g) for g in self.generators])
        return draws.to(device=like.device, dtype=like.dtype)

    def rand(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """U(0, 1) numbers of ``shape`` (batch first), on ``like``'s device and dtype."""
        return self._draw(torch.rand, shape, like)

    def randn(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """N(0, 1) numbers of ``shape`` (batch first), on ``like``'s device and dtype."""
        return self._draw(torch.randn, shape, like)


def _stream_seed(key: Sequence[int]) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> 1)


def _rand(shape: Sequence[int], like: Tensor, draws: SampleDraws | None) -> Tensor:
    if draws is None:
        return torch.rand(tuple(shape), device=like.device, dtype=like.dtype)  # the global stream
    return draws.rand(shape, like)


def bitflip(x: Tensor, p: float, draws: SampleDraws | None = None) -> Tensor:
    """Flip each binary pixel with probability ``p`` (XOR with Bernoulli(p))."""
    flip = _rand(x.shape, x, draws) < p
    return torch.where(flip, 1.0 - x, x)


def masked_uniform(x: Tensor, p: float, draws: SampleDraws | None = None) -> Tensor:
    """Replace each pixel by U(0, 1) noise with probability ``p``."""
    replace = _rand(x.shape, x, draws) < p
    return torch.where(replace, _rand(x.shape, x, draws), x)


def corrupt(x: Tensor, noise: Noise, p: float, draws: SampleDraws | None = None) -> Tensor:
    """Apply the configured input noise (fresh at every call; from ``draws`` when given, else the global stream)."""
    if noise == "bitflip":
        return bitflip(x, p, draws)
    if noise == "masked_uniform":
        return masked_uniform(x, p, draws)
    return x


def init_gamma(batch: int, k: int, spatial: tuple[int, int], like: Tensor, draws: SampleDraws | None = None) -> Tensor:
    """Random initial responsibilities ``|N(0, 1)|`` normalised over K; all ones when K = 1.

    Returns:
        gamma: (B, K, 1, H, W), on ``like``'s device and dtype.
    """
    if k == 1:
        return like.new_ones(batch, 1, 1, *spatial)
    shape = (batch, k, 1, *spatial)
    if draws is None:
        gamma = torch.randn(shape, device=like.device, dtype=like.dtype).abs()
    else:
        gamma = draws.randn(shape, like).abs()
    return gamma / gamma.sum(1, keepdim=True)


def e_step(psi: Tensor, target: Tensor, distribution: Distribution, e_sigma: float = 0.25) -> Tensor:
    """Posterior responsibilities of each component for each pixel.

    Args:
        psi: (B, K, C, H, W) per-component predictions (Bernoulli means or Gaussian means).
        target: (B, 1, C, H, W) the clean target frame.
        distribution: pixel likelihood, ``bernoulli`` or ``gaussian``.
        e_sigma: standard deviation (a temperature) of the Gaussian likelihood.

    Returns:
        gamma: (B, K, 1, H, W), summing to one over K.
    """
    if distribution == "bernoulli":
        lik = target * psi + (1.0 - target) * (1.0 - psi)
    else:
        lik = torch.exp(-((target - psi) ** 2) / (2 * e_sigma**2)) / math.sqrt(2 * math.pi * e_sigma**2)
    p = lik.sum(2, keepdim=True) + LIKELIHOOD_EPS  # (B, K, 1, H, W): summed over channels
    return p / p.sum(1, keepdim=True)


@dataclass
class EMOutput:
    """Everything the unroll produced, one entry per EM step (the random initial gamma excluded)."""

    preds: list[Tensor]  # T x (B, K, C, H, W): psi after each M-step
    gammas: list[Tensor]  # T x (B, K, 1, H, W): gamma after each E-step
    targets: Tensor  # (B, T, 1, C, H, W) the clean frame each step was scored against
    inputs: Tensor  # (B, T, C, H, W) the corrupted frame each step read

    # Kept as per-step lists: slicing one stacked tensor would make autograd build a full-size zero
    # gradient for every slice the loss reads.

    def stacked_preds(self) -> Tensor:
        """(B, T, K, C, H, W), detached."""
        return torch.stack([p.detach() for p in self.preds], 1)

    def stacked_gammas(self) -> Tensor:
        """(B, T, K, 1, H, W), detached."""
        return torch.stack([g.detach() for g in self.gammas], 1)


class NeuralEM(nn.Module):
    """Unrolls ``steps`` EM iterations of a spatial mixture whose components are neural networks.

    Args:
        cell: the M-step, mapping ``(delta (B*K, C, H, W), state)`` to ``(psi (B*K, C, H, W), state)``
            and providing ``init_state(n, like)``.
        distribution: pixel likelihood used by the E-step.
        noise: input corruption, applied in training and evaluation alike, fresh at every step.
        noise_prob: probability ``p`` of the noise.
        e_sigma: Gaussian E-step standard deviation.
        gradient_gamma: let gradients flow through gamma into the masked deltas (static data);
            False stops them (video).
    """

    def __init__(
        self,
        cell: nn.Module,
        distribution: Distribution = "bernoulli",
        noise: Noise = "bitflip",
        noise_prob: float = 0.1,
        e_sigma: float = 0.25,
        gradient_gamma: bool = True,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.distribution = distribution
        self.noise = noise
        self.noise_prob = noise_prob
        self.e_sigma = e_sigma
        self.gradient_gamma = gradient_gamma

    def forward(self, frames: Tensor, k: int, steps: int, draws: SampleDraws | None = None) -> EMOutput:
        """Run the unroll.

        Args:
            frames: (B, F, C, H, W) clean frames; F = 1 for static data (the image is used at every
                step), otherwise F >= steps + 1 (step t reads frame t and predicts frame t + 1).
            k: number of components K.
            steps: number of EM steps T.
            draws: per-sample random streams for the noise and the initial gamma (evaluation); None draws
                from the global stream (training).
        """
        B, F, C, H, W = frames.shape
        if F == 1:
            clean = frames.expand(B, steps + 1, C, H, W)  # static: the same image at every step
        else:
            clean = frames[:, : steps + 1]  # (B, T+1, C, H, W)
        noisy = corrupt(clean[:, :steps], self.noise, self.noise_prob, draws)  # (B, T, C, H, W)
        targets = clean[:, 1:].unsqueeze(2)  # (B, T, 1, C, H, W)

        state = self.cell.init_state(B * k, frames)
        psi = frames.new_zeros(B, k, C, H, W)
        gamma = init_gamma(B, k, (H, W), frames, draws)  # (B, K, 1, H, W)
        preds, gammas = [], []
        for t in range(steps):
            mask = gamma if self.gradient_gamma else gamma.detach()
            delta = mask * (noisy[:, t].unsqueeze(1) - psi)  # (B, K, C, H, W)
            psi, state = self.cell(delta.reshape(B * k, C, H, W), state)
            psi = psi.view(B, k, C, H, W).to(frames.dtype)  # full precision for E-step and loss under autocast
            gamma = e_step(psi, targets[:, t], self.distribution, self.e_sigma)
            preds.append(psi)
            gammas.append(gamma)
        return EMOutput(preds, gammas, targets, noisy)
