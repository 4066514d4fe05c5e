"""Encoders and decoders of the paper's architectures, and the M-step cell built from them.

Three layouts, as in the paper's experiments (the cell feeds the encoder (B*K, C, H, W) deltas and the
decoder returns (B*K, C, H, W) predictions):

- ``fc`` (static shapes): no encoder, the D pixels feed the RNN; one fully connected decoder layer.
- ``flying_shapes`` (1x28x28): conv 32 -> conv 64 (k4 s2) -> fc 512 encoder; fc 512 -> fc 7*7*64 ->
  [2x nearest upsample, conv 32 k4] -> [2x upsample, conv 1 k4] decoder.
- ``flying_mnist`` (1x24x24): per-sample input standardisation, conv 32 -> 64 -> 128 (k4 s2) -> fc 512
  encoder; fc 512 -> fc 3*3*128 -> up+conv 64 -> up+conv 32 -> up+conv 1 decoder.

Every hidden layer of the convolutional layouts is followed by layer norm over all non-batch axes (with
a per-channel scale and offset, as TF's ``layer_norm``), then ELU in the encoder and ReLU in the
decoder. Convs use TF "SAME" padding. Weights are Glorot-uniform and biases zero (the TF defaults).
Each decoder [upsample, conv] pair runs as one ``UpsampleConv`` on the un-upsampled map (the same
function and parameters, fewer multiply-adds).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nem_lightning.cells import NEMCell, RNNEMCell
from nem_lightning.errors import ConfigError

MStep = Literal["rnn_em", "n_em"]
Architecture = Literal["fc", "flying_shapes", "flying_mnist"]

CONV_INPUT_SHAPES = {"flying_shapes": (1, 28, 28), "flying_mnist": (1, 24, 24)}  # (C, H, W) each was built for
ENCODED_SIZE = 512  # width of the last encoder layer and of the first decoder layer
LAYER_NORM_EPS = 1e-12  # variance epsilon of TF's contrib layer_norm, which the original used (torch's default is 1e-5)
STANDARDIZE_EPS = 1e-6  # keeps the input standardisation finite on an all-zero (constant) input


def glorot_(layer: nn.Linear | nn.Conv2d) -> nn.Linear | nn.Conv2d:
    """Glorot-uniform weights and zero bias, the original's TF defaults; returns the layer."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis: output ceil(size / stride), odd extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePadConv(nn.Conv2d):
    """Conv2d with TF "SAME" padding, which is asymmetric (1 before, 2 after) for k4 s1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 4, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0)
        glorot_(self)

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:  # symmetric (every k4 s2 conv on an even map): the conv pads, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        return super().forward(F.pad(x, (left, right, top, bottom)))


def fold_upsampled_taps(weight: Tensor, dim: int) -> Tensor:
    """Fold the 4 taps of a k4 kernel along ``dim`` onto the source map of a 2x nearest upsample.

    With TF "SAME" padding (1 before, 2 after), output pixel o of the upsampled grid reads upsampled
    pixels o - 1 .. o + 2, i.e. source pixels floor((o - 1) / 2) .. floor((o + 2) / 2); taps reading
    the same source pixel i add up. Indexed by d = o - 2i + 2 the folded taps are
    [w3, w2 + w3, w1 + w2, w0 + w1, w0, 0]: an even o = 2m reads w0, w1 + w2, w3 from source m - 1, m,
    m + 1 (d = 4, 2, 0), an odd o = 2m + 1 reads w0 + w1, w2 + w3 from m, m + 1 (d = 3, 1). The trailing
    zero (d = 5) is the odd phase's empty tap on m - 1. The upsampled map's zero padding lies exactly on
    source pixels -1 and n, so zero padding of the source map by one pixel on each side is the same.
    """
    w0, w1, w2, w3 = weight.unbind(dim)
    return torch.stack([w3, w2 + w3, w1 + w2, w0 + w1, w0, torch.zeros_like(w0)], dim)


class UpsampleConv(nn.Conv2d):
    """2x nearest upsample, then a k4 s1 conv with TF "SAME" padding, computed on the source map.

    The same function without the upsampled map, in one of two exact forms (``fold_upsampled_taps``):

    - a stride-2 transposed conv with the folded 5x5 kernel: 25 multiply-adds per source pixel and
      channel pair instead of 64;
    - the phase conv: each output phase (a, b) (row and column parity) is a 3x3 conv of the source map
      (padded by 1), so one conv with 4 * out_channels outputs computes all four and ``pixel_shuffle``
      interleaves them: 36 multiply-adds.

    On CPU (oneDNN) the transposed conv measured faster, except with a single output channel, where
    the transposed conv is slow and the phase conv (4 outputs) wins; ``benchmarks/bench_networks.py``
    times both forms per layer.
    ``weight`` stays the (out, in, 4, 4) parameter of the upsample + conv layout and the folded kernels
    are derived from it in every forward, so the state dict and the gradients are that layout's.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 4, padding=0)
        glorot_(self)

    def forward(self, x: Tensor) -> Tensor:  # (n, C_in, H, W) -> (n, C_out, 2H, 2W)
        return self.phase_conv(x) if self.out_channels == 1 else self.transposed_conv(x)

    def transposed_conv(self, x: Tensor) -> Tensor:
        folded = fold_upsampled_taps(fold_upsampled_taps(self.weight, 2), 3)[:, :, :5, :5]  # (C_out, C_in, 5, 5)
        # out[o] = sum_i x[i] * folded[o - 2i + 2]; output_padding gives 2H (and not 2H - 1) rows
        return F.conv_transpose2d(x, folded.transpose(0, 1), self.bias, stride=2, padding=2, output_padding=1)

    def phase_conv(self, x: Tensor) -> Tensor:
        c_out, c_in = self.out_channels, self.in_channels
        folded = fold_upsampled_taps(fold_upsampled_taps(self.weight, 2), 3)  # (C_out, C_in, 6, 6)
        # Output 2m + a reads source m - 1, m, m + 1 (kernel taps 0, 1, 2 of a padding-1 conv) at
        # d = a + 4, a + 2, a: split each d axis into (j, a) with d = 2j + a and reverse j.
        kernel = folded.view(c_out, c_in, 3, 2, 3, 2).flip(2, 4).permute(0, 3, 5, 1, 2, 4)  # (C_out, 2, 2, C_in, 3, 3)
        # (4 * C_out, C_in, 3, 3), output channel 4c + 2a + b: the order pixel_shuffle reads
        kernel = kernel.reshape(4 * c_out, c_in, 3, 3)
        y = F.conv2d(x, kernel, self.bias.repeat_interleave(4), padding=1)  # (n, 4 * C_out, H, W)
        return F.pixel_shuffle(y, 2)  # (n, C_out, 2H, 2W)


class ChannelLayerNorm(nn.Module):
    """Layer norm over all non-batch axes, then a per-channel (axis 1) scale and offset.

    This is TF's ``layer_norm`` (statistics over all non-batch axes, parameters on the channel axis):
    on (n, C, H, W) it normalises over (C, H, W) together; on (n, F) it is the usual layer norm.
    """

    def __init__(self, channels: int, eps: float = LAYER_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel each, with the affine inside: group norm with a single group is exactly this on
        # feature maps, and the plain layer norm on vectors (where group norm's kernel is slow on CPU). Under
        # bf16 autocast both take bf16 activations with float32 parameters, keep the statistics in float32 and
        # return bf16, so no layer casts back, and the parameter gradients are reduced without a float32 copy
        # of the activation's gradient.
        if x.dim() > 2:
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        return F.layer_norm(x, x.shape[1:], self.weight, self.bias, self.eps)


class Standardize(nn.Module):
    """Per-sample input standardisation over (C, H, W): ``(x - mean) / (std + eps)``.

    The original divided by the standard deviation alone, which gives NaN when a component's input
    is constant (e.g. all zeros); ``eps`` (``STANDARDIZE_EPS``) keeps it finite. The square root is
    taken of the variance clamped at ``eps**2``, so its gradient is finite there too.
    """

    def __init__(self, eps: float = STANDARDIZE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=(1, 2, 3), correction=0, keepdim=True)  # (n, 1, 1, 1) each
        return (x - mean) / (var.clamp_min(self.eps**2).sqrt() + self.eps)


class Unflatten(nn.Module):
    """Reshape (n, C*H*W) to (n, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.view(-1, *self.shape)


class OutputSigmoid(nn.Module):
    """Sigmoid of the decoder output, always in float32.

    Under bf16 autocast a bf16 sigmoid rounds every probability above 1 - 2^-9 to exactly 1, where the
    clipped Bernoulli losses have no gradient; float32 keeps confident pixels learnable.
    """

    def forward(self, x):
        return torch.sigmoid(x.float())


def fc_decoder(hidden_size: int, input_shape: tuple[int, int, int], sigmoid_output: bool) -> nn.Module:
    """Static shapes decoder: one fully connected layer to every pixel."""
    linear = nn.Linear(hidden_size, math.prod(input_shape))
    nn.init.xavier_uniform_(linear.weight)  # the original's TF defaults: Glorot weights, zero bias
    nn.init.zeros_(linear.bias)
    layers: list[nn.Module] = [linear]
    if sigmoid_output:
        layers.append(OutputSigmoid())
    layers.append(Unflatten(input_shape))
    return nn.Sequential(*layers)


def conv_encoder(
    input_shape: tuple[int, int, int], channels: tuple[int, ...], standardize: bool, eps: float = LAYER_NORM_EPS
) -> nn.Sequential:
    """[conv k4 s2, LN, ELU] per entry of ``channels``, then [fc 512, LN, ELU]: (n, C, H, W) -> (n, 512)."""
    c, h, w = input_shape
    layers: list[nn.Module] = [Standardize()] if standardize else []
    for out in channels:
        layers += [SamePadConv(c, out, 4, stride=2), ChannelLayerNorm(out, eps), nn.ELU()]
        c, h, w = out, math.ceil(h / 2), math.ceil(w / 2)  # SAME padding halves, rounding up
    layers += [nn.Flatten(), glorot_(nn.Linear(c * h * w, ENCODED_SIZE)), ChannelLayerNorm(ENCODED_SIZE, eps), nn.ELU()]
    return nn.Sequential(*layers)


def conv_decoder(
    hidden_size: int,
    start_shape: tuple[int, int, int],
    channels: tuple[int, ...],
    sigmoid_output: bool,
    eps: float = LAYER_NORM_EPS,
) -> nn.Sequential:
    """fc 512 -> fc to ``start_shape`` -> [2x nearest upsample, conv k4 s1] per entry of ``channels``.

    LN + ReLU after every layer but the last, which is sigmoid (``sigmoid_output``) or linear.
    """
    c, h, w = start_shape
    layers: list[nn.Module] = [
        glorot_(nn.Linear(hidden_size, ENCODED_SIZE)),
        ChannelLayerNorm(ENCODED_SIZE, eps),
        nn.ReLU(),
    ]
    layers += [glorot_(nn.Linear(ENCODED_SIZE, c * h * w)), ChannelLayerNorm(c * h * w, eps), nn.ReLU()]
    layers.append(Unflatten(start_shape))  # (n, C, H, W)
    for i, out in enumerate(channels):
        # the Identity holds the upsample's place, so layer indices (and state-dict keys) stay those of the
        # [upsample, conv] layout the shipped checkpoints were saved with
        layers += [nn.Identity(), UpsampleConv(c, out)]
        if i < len(channels) - 1:
            layers += [ChannelLayerNorm(out, eps), nn.ReLU()]
        c = out
    if sigmoid_output:
        layers.append(OutputSigmoid())
    return nn.Sequential(*layers)


def _check_input_shape(architecture: str, input_shape: tuple[int, ...]) -> None:
    expected = CONV_INPUT_SHAPES[architecture]
    if input_shape != expected:
        raise ConfigError(
            f"model.architecture={architecture} needs model.input_shape={list(expected)} (C, H, W), "
            f"got {list(input_shape)}"
        )


def build_cell(
    m_step: MStep,
    architecture: Architecture,
    input_shape: tuple[int, int, int],
    hidden_size: int,
    layer_norm: bool,
    sigmoid_output: bool,
    layer_norm_eps: float = LAYER_NORM_EPS,
) -> nn.Module:
    """Build the M-step cell for one of the paper's architectures.

    Args:
        m_step: ``rnn_em`` (learned update) or ``n_em`` (gradient step, tied weights; ``fc`` only).
        architecture: ``fc``: no encoder (the D pixels feed the RNN) and a fully connected decoder;
            ``flying_shapes``: the conv net for 1x28x28 frames; ``flying_mnist``: the conv net with
            input standardisation for 1x24x24 frames.
        input_shape: (C, H, W) of one frame.
        hidden_size: width of the recurrent state (paper: 250 static, 100 flying shapes, 250 flying MNIST).
        layer_norm: layer norm on the RNN pre-activation (RNN-EM only).
        sigmoid_output: sigmoid on the decoder output (Bernoulli pixels); linear for Gaussian.
        layer_norm_eps: variance epsilon of every layer norm (the conv layers' and the cell's).
    """
    input_shape = tuple(int(n) for n in input_shape)
    if architecture not in get_args(Architecture):
        valid = ", ".join(get_args(Architecture))
        raise ConfigError(f"unknown model.architecture={architecture!r}; expected one of: {valid}")
    if m_step not in get_args(MStep):
        raise ConfigError(f"unknown model.m_step={m_step!r}; expected one of: {', '.join(get_args(MStep))}")
    if m_step == "n_em":
        if architecture != "fc":
            raise ConfigError(
                f"model.m_step=n_em ties its decoder to its input weights, which exists only for "
                f"model.architecture=fc, got {architecture}; use model.m_step=rnn_em"
            )
        return NEMCell(input_shape, hidden_size)
    if architecture == "fc":
        return RNNEMCell(
            nn.Flatten(),
            math.prod(input_shape),
            hidden_size,
            fc_decoder(hidden_size, input_shape, sigmoid_output),
            layer_norm,
            layer_norm_eps,
        )
    _check_input_shape(architecture, input_shape)
    if architecture == "flying_shapes":
        # (B*K, 1, 28, 28) -> (B*K, 32, 14, 14) -> (B*K, 64, 7, 7) -> (B*K, 512)
        encoder = conv_encoder(input_shape, (32, 64), standardize=False, eps=layer_norm_eps)
        # (B*K, hidden) -> (B*K, 512) -> (B*K, 64, 7, 7) -> (B*K, 32, 14, 14) -> (B*K, 1, 28, 28)
        decoder = conv_decoder(hidden_size, (64, 7, 7), (32, 1), sigmoid_output, layer_norm_eps)
    else:
        # (B*K, 1, 24, 24) -> (B*K, 32, 12, 12) -> (B*K, 64, 6, 6) -> (B*K, 128, 3, 3) -> (B*K, 512)
        encoder = conv_encoder(input_shape, (32, 64, 128), standardize=True, eps=layer_norm_eps)
        # (B*K, hidden) -> (B*K, 512) -> (B*K, 128, 3, 3) -> (B*K, 64, 6, 6) -> (B*K, 32, 12, 12) -> (B*K, 1, 24, 24)
        decoder = conv_decoder(hidden_size, (128, 3, 3), (64, 32, 1), sigmoid_output, layer_norm_eps)
    return RNNEMCell(encoder, ENCODED_SIZE, hidden_size, decoder, layer_norm, layer_norm_eps)
