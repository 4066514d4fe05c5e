"""Encoders and decoders of the paper's architectures, and the M-step cell built from them."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from nem_lightning.cells import NEMCell, RNNEMCell

MStep = Literal["rnn_em", "n_em"]
Architecture = Literal["fc"]


class Unflatten(nn.Module):
    """Reshape (n, C*H*W) to (n, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.view(-1, *self.shape)


def fc_decoder(hidden_size: int, input_shape: tuple[int, int, int], sigmoid_output: bool) -> nn.Module:
    """Static shapes decoder: one fully connected layer to every pixel."""
    linear = nn.Linear(hidden_size, math.prod(input_shape))
    nn.init.xavier_uniform_(linear.weight)  # the original's TF defaults: Glorot weights, zero bias
    nn.init.zeros_(linear.bias)
    layers: list[nn.Module] = [linear]
    if sigmoid_output:
        layers.append(nn.Sigmoid())
    layers.append(Unflatten(input_shape))
    return nn.Sequential(*layers)


def build_cell(
    m_step: MStep,
    architecture: Architecture,
    input_shape: tuple[int, int, int],
    hidden_size: int,
    layer_norm: bool,
    sigmoid_output: bool,
) -> nn.Module:
    """Build the M-step cell for one of the paper's architectures.

    Args:
        m_step: ``rnn_em`` (learned update) or ``n_em`` (gradient step, tied weights).
        architecture: ``fc``: no encoder (the D pixels feed the RNN) and a fully connected decoder.
        input_shape: (C, H, W) of one frame.
        hidden_size: width of the recurrent state.
        layer_norm: layer norm on the RNN pre-activation (RNN-EM only).
        sigmoid_output: sigmoid on the decoder output (Bernoulli pixels); linear for Gaussian.
    """
    input_shape = tuple(input_shape)
    if m_step == "n_em":
        return NEMCell(input_shape, hidden_size)
    if architecture == "fc":
        return RNNEMCell(
            nn.Flatten(),
            math.prod(input_shape),
            hidden_size,
            fc_decoder(hidden_size, input_shape, sigmoid_output),
            layer_norm,
        )
    raise ValueError(f"unknown architecture {architecture!r}; expected one of: fc")
