"""M-step cells: the learned RNN-EM update and the gradient-step N-EM update.

Both map the responsibility-masked error ``delta`` (B*K, C, H, W) and the previous state to the new
per-component prediction ``psi`` (B*K, C, H, W) and the new state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class RNNEMCell(nn.Module):
    """RNN-EM: ``a = Linear([enc(delta); h])``, new state ``h = sigmoid(a)``, ``psi = dec(...)``.

    The decoder reads ``sigmoid(LN(a))`` when layer norm is on, else the new state ``sigmoid(a)``.

    Args:
        encoder: maps (B*K, C, H, W) to (B*K, encoded_size).
        encoded_size: width of the encoder output.
        hidden_size: width of the recurrent state.
        decoder: maps (B*K, hidden_size) to (B*K, C, H, W).
        layer_norm: apply layer norm to the pre-activation before the decoder.
        layer_norm_eps: its variance epsilon (the original's TF layer norm used 1e-12).
    """

    def __init__(
        self,
        encoder: nn.Module,
        encoded_size: int,
        hidden_size: int,
        decoder: nn.Module,
        layer_norm: bool,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.hidden_size = hidden_size
        # Linear([enc; h]) split in two, which avoids concatenating (and un-concatenating) every step
        self.input_weights = nn.Linear(encoded_size, hidden_size)
        self.recurrent_weights = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if layer_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights of the whole ``[enc; h] -> hidden`` matrix and zero bias (TF defaults)."""
        fan_in, fan_out = self.input_weights.in_features + self.hidden_size, self.hidden_size
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.input_weights.weight, -bound, bound)
        nn.init.uniform_(self.recurrent_weights.weight, -bound, bound)
        nn.init.zeros_(self.input_weights.bias)

    def init_state(self, n: int, like: Tensor) -> Tensor:
        """Zero hidden state, (n, hidden_size)."""
        return like.new_zeros(n, self.hidden_size)

    def forward(self, delta: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        a = self.input_weights(self.encoder(delta)) + self.recurrent_weights(h)  # (B*K, hidden)
        h = torch.sigmoid(a)
        out = torch.sigmoid(self.norm(a)) if self.norm is not None else h
        return self.decoder(out), h


class NEMCell(nn.Module):
    """N-EM: one generalised-EM gradient step on the state ``z`` with tied, transposed weights.

    ``z <- z + eta * sigmoid'(z) * (delta @ W)`` and ``psi = sigmoid(sigmoid(z) @ W^T)``, where
    ``W`` is (D, H) without bias and ``eta`` a learned scalar step size. With ``delta = gamma * (x - psi)``
    this is exactly one gradient-ascent step on the gamma-weighted Bernoulli log-likelihood.

    Args:
        input_shape: (C, H, W) of one frame; D = C*H*W.
        hidden_size: width of the state ``z``.
        step_size: initial value of the learned step size ``eta``.
    """

    def __init__(self, input_shape: tuple[int, int, int], hidden_size: int = 250, step_size: float = 1.0) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.hidden_size = hidden_size
        d = math.prod(self.input_shape)
        self.weight = nn.Parameter(torch.empty(d, hidden_size))
        nn.init.xavier_uniform_(self.weight)
        self.step_size = nn.Parameter(torch.tensor(float(step_size)))

    def init_state(self, n: int, like: Tensor) -> Tensor:
        """Zero state z, (n, hidden_size)."""
        return like.new_zeros(n, self.hidden_size)

    def decode(self, z: Tensor) -> Tensor:
        """psi = sigmoid(sigmoid(z) @ W^T), reshaped to (n, C, H, W)."""
        logits = torch.sigmoid(z) @ self.weight.t()
        return torch.sigmoid(logits.float()).view(-1, *self.input_shape)  # float32 even under autocast

    def forward(self, delta: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(z)
        z = z + self.step_size * s * (1.0 - s) * (delta.flatten(1) @ self.weight)  # (B*K, H)
        return self.decode(z), z
