"""The paper's encoder/decoder architectures: shapes, padding, layer norm, init and configuration errors."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nem_lightning.em import NeuralEM
from nem_lightning.errors import ConfigError
from nem_lightning.networks import (
    ChannelLayerNorm,
    OutputSigmoid,
    SamePadConv,
    Standardize,
    UpsampleConv,
    build_cell,
    same_padding,
)

# architecture -> (input_shape, hidden_size, sigmoid_output) as the paper's experiments use them
PAPER = {"flying_shapes": ((1, 28, 28), 100, True), "flying_mnist": ((1, 24, 24), 250, False)}


def _cell(architecture: str, sigmoid_output: bool | None = None) -> nn.Module:
    shape, hidden, sigmoid = PAPER[architecture]
    torch.manual_seed(0)
    sigmoid = sigmoid if sigmoid_output is None else sigmoid_output
    return build_cell("rnn_em", architecture, shape, hidden, True, sigmoid)


@pytest.mark.parametrize("architecture", PAPER)
def test_encoder_decoder_and_cell_output_shapes(architecture):
    """Encoder maps (n, C, H, W) to (n, 512), decoder (n, hidden) back to (n, C, H, W), the cell both ways."""
    shape, hidden, _ = PAPER[architecture]
    cell = _cell(architecture)
    delta = torch.randn(3, *shape)
    assert cell.encoder(delta).shape == (3, 512)
    assert cell.decoder(torch.rand(3, hidden)).shape == (3, *shape)
    psi, h = cell(delta, cell.init_state(3, delta))
    assert psi.shape == (3, *shape) and h.shape == (3, hidden)


@pytest.mark.parametrize("architecture", PAPER)
def test_encoder_feature_maps_halve_with_same_padding(architecture):
    """The stride-2 k4 convs give 28 -> 14 -> 7 and 24 -> 12 -> 6 -> 3, as TF's SAME padding does."""
    shape, _, _ = PAPER[architecture]
    x, sizes = torch.randn(2, *shape), []
    for layer in _cell(architecture).encoder:
        x = layer(x)
        if isinstance(layer, SamePadConv):
            sizes.append(tuple(x.shape[1:]))
    if architecture == "flying_shapes":
        assert sizes == [(32, 14, 14), (64, 7, 7)]
    else:
        assert sizes == [(32, 12, 12), (64, 6, 6), (128, 3, 3)]


def test_same_padding_matches_tf_formula():
    """Stride 2 on an even size pads 1/1; stride 1 with k4 pads 1 before and 2 after; odd sizes put the extra after."""
    assert same_padding(28, 4, 2) == (1, 1)
    assert same_padding(6, 4, 2) == (1, 1)
    assert same_padding(14, 4, 1) == (1, 2)
    assert same_padding(7, 4, 2) == (1, 2)


@pytest.mark.parametrize("tap, shift", [((0, 0), (1, 1)), ((3, 3), (-2, -2)), ((1, 1), (0, 0))])
def test_stride1_conv_pads_one_before_two_after(tap, shift):
    """A one-hot kernel moves an impulse by (1 - tap): only padding (1 before, 2 after) gives these shifts."""
    conv = SamePadConv(1, 1, 4, stride=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, tap[0], tap[1]] = 1.0
        conv.bias.zero_()
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 1.0
    y = conv(x)
    assert y.shape == x.shape
    expected = torch.zeros_like(x)
    expected[0, 0, 2 + shift[0], 3 + shift[1]] = 1.0
    torch.testing.assert_close(y, expected)


def test_layer_norm_normalises_over_channels_and_space_together():
    """Statistics are over (C, H, W) jointly (not per channel); the affine is per channel."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2.0 + torch.tensor([0.0, 5.0, -3.0]).view(1, 3, 1, 1)  # channels at different offsets
    norm = ChannelLayerNorm(3)
    y = norm(x)
    assert torch.allclose(y.mean((1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(y.var((1, 2, 3), correction=0), torch.ones(4), atol=1e-3)
    assert (y.mean((2, 3))[:, 1] - y.mean((2, 3))[:, 2]).min() > 1.0  # per-channel offsets survive: not instance norm
    assert norm.weight.shape == (3,) and norm.bias.shape == (3,)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        norm.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    mean, var = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), correction=0, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, 3, 1, 1) + norm.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("architecture", PAPER)
def test_sigmoid_output_flag_decides_the_last_layer(architecture):
    """With the same weights, sigmoid_output=True returns exactly sigmoid of the sigmoid_output=False output."""
    linear, sigmoid = _cell(architecture, sigmoid_output=False), _cell(architecture, sigmoid_output=True)
    sigmoid.load_state_dict(linear.state_dict())
    shape, hidden, _ = PAPER[architecture]
    h = torch.rand(4, hidden)
    out = linear.decoder(h)
    assert out.min() < 0  # linear output is unbounded
    torch.testing.assert_close(sigmoid.decoder(h), torch.sigmoid(out))


def test_standardisation_of_all_zero_input_is_finite():
    """An all-zero component input (the original's NaN case) gives finite outputs and finite gradients."""
    cell = _cell("flying_mnist")
    delta = torch.zeros(2, 1, 24, 24, requires_grad=True)
    psi, h = cell(delta, cell.init_state(2, delta))
    assert torch.isfinite(psi).all() and torch.isfinite(h).all()
    psi.sum().backward()
    assert torch.isfinite(delta.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in cell.parameters())
    z = Standardize()(torch.zeros(1, 1, 3, 3))
    assert torch.equal(z, torch.zeros(1, 1, 3, 3))


def test_standardisation_is_per_sample():
    """Each sample gets mean 0 and standard deviation ~1 over (C, H, W), whatever the others hold."""
    x = torch.cat([torch.rand(1, 1, 24, 24) * 10 + 3, torch.rand(1, 1, 24, 24) * 0.1])
    y = Standardize()(x)
    assert torch.allclose(y.mean((1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y.std((1, 2, 3), correction=0), torch.ones(2), atol=1e-4)


@pytest.mark.parametrize("architecture", PAPER)
def test_unroll_runs_forward_and_backward_with_finite_gradients(architecture):
    """A 2-step, K=2 NeuralEM unroll gives finite, non-zero gradients to every parameter."""
    shape, _, sigmoid = PAPER[architecture]
    torch.manual_seed(0)
    em = NeuralEM(_cell(architecture), "bernoulli" if sigmoid else "gaussian", "none", gradient_gamma=False)
    frames = (torch.rand(2, 3, *shape) < 0.3).float()  # (B, F, C, H, W) video: step t predicts frame t+1
    out = em(frames, k=2, steps=2)
    assert out.preds[-1].shape == (2, 2, *shape)
    loss = sum((g.detach() * (p - out.targets[:, t]) ** 2).sum() for t, (p, g) in enumerate(zip(out.preds, out.gammas)))
    loss.backward()
    for name, p in em.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_flying_shapes_parameter_count_matches_the_table():
    """conv 32, conv 64, fc 512 / RNN 100 / fc 512, fc 3136, conv 32, conv 1, each LN with a scale and offset."""

    def conv(c_in, c_out):  # k4 weights and a bias
        return c_in * c_out * 4 * 4 + c_out

    def fc(n_in, n_out):
        return n_in * n_out + n_out

    def ln(channels):  # one scale and one offset per channel
        return 2 * channels

    encoder = conv(1, 32) + ln(32) + conv(32, 64) + ln(64) + fc(64 * 7 * 7, 512) + ln(512)
    recurrent = fc(512, 100) + 100 * 100 + ln(100)  # [enc; h] -> 100: one bias, recurrent part without
    decoder = fc(100, 512) + ln(512) + fc(512, 7 * 7 * 64) + ln(7 * 7 * 64) + conv(64, 32) + ln(32) + conv(32, 1)
    cell = _cell("flying_shapes")
    assert sum(p.numel() for p in cell.encoder.parameters()) == encoder
    assert sum(p.numel() for p in cell.decoder.parameters()) == decoder
    assert sum(p.numel() for p in cell.parameters()) == encoder + recurrent + decoder == 3_403_389


def test_conv_architectures_use_glorot_weights_and_zero_biases():
    """Every conv and linear layer starts with zero bias and Glorot-uniform-bounded weights."""
    cell = _cell("flying_mnist")
    layers = [m for m in [*cell.encoder, *cell.decoder] if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) == 9  # 3 convs + fc in the encoder, 2 fc + 3 convs in the decoder
    for layer in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize(
    "args, names",
    [
        (("rnn_em", "flying_shapes", (1, 24, 24)), ["model.input_shape", "[1, 28, 28]"]),
        (("rnn_em", "flying_mnist", (1, 28, 28)), ["model.input_shape", "[1, 24, 24]"]),
        (("n_em", "flying_shapes", (1, 28, 28)), ["model.m_step", "model.architecture=fc"]),
        (("rnn_em", "conv", (1, 28, 28)), ["model.architecture", "fc, flying_shapes, flying_mnist"]),
    ],
)
def test_invalid_configurations_raise_config_error_naming_the_option(args, names):
    """Wrong input shape, N-EM with a conv net and an unknown architecture each name the option to fix."""
    with pytest.raises(ConfigError) as err:
        build_cell(*args, 100, True, True)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("m_step, architecture", [("rnn_em", "fc"), ("n_em", "fc"), ("rnn_em", "flying_shapes")])
def test_bernoulli_predictions_stay_float32_under_bf16_autocast(m_step, architecture):
    """Under bf16 autocast a confident pixel (logit 8) stays below 1 and keeps a loss gradient.

    A bf16 sigmoid would round sigmoid(8) = 0.99966 to exactly 1, where the clipped BCE is flat.
    """
    from nem_lightning.losses import intra_loss

    shape = (1, 28, 28) if architecture != "fc" else (1, 4, 4)
    cell = build_cell(m_step, architecture, shape, 8, False, True)
    with torch.no_grad():  # every output logit is exactly 8
        if m_step == "n_em":
            cell.weight.fill_(2.0)  # sigmoid(0) = 0.5 per unit, 8 units: 0.5 * 2 * 8 = 8
        else:
            last = [m for m in cell.decoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
            last.weight.zero_()
            last.bias.fill_(8.0)
    delta = torch.zeros(2, *shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        psi, _ = cell(delta, cell.init_state(2, delta))
        loss = intra_loss(psi, torch.ones_like(psi), "bernoulli").sum()
    assert psi.dtype == torch.float32
    torch.testing.assert_close(psi, torch.full_like(psi, torch.sigmoid(torch.tensor(8.0)).item()))
    params = [cell.weight] if m_step == "n_em" else [last.bias]
    (grad,) = torch.autograd.grad(loss, params)
    assert grad.abs().sum() > 0


def test_layer_norm_epsilon_reaches_every_norm_and_keeps_tiny_inputs_visible():
    """model.layer_norm_eps sets every layer norm.

    TF's 1e-12 rescales a 1e-5-scale input to unit variance; torch's 1e-5 flattens it.
    """
    for eps in (1e-12, 1e-5):
        cell = build_cell("rnn_em", "flying_shapes", (1, 28, 28), 16, True, True, eps)
        norms = [m for m in cell.modules() if isinstance(m, (ChannelLayerNorm, nn.LayerNorm))]
        assert len(norms) == 7 and all(m.eps == eps for m in norms)  # 3 encoder, 3 decoder, 1 cell
    tiny = torch.randn(2, 4, 5, 5) * 1e-5  # like the masked input of a component whose gamma is tiny
    assert ChannelLayerNorm(4, eps=1e-12)(tiny).std().item() == pytest.approx(1.0, rel=0.05)
    assert ChannelLayerNorm(4, eps=1e-5)(tiny).std().item() < 1e-2


# (in, out, source H, source W) of every upsample + conv layer of both decoders, and an odd non-square map
UPSAMPLE_CONVS = [(64, 32, 7, 7), (32, 1, 14, 14), (128, 64, 3, 3), (64, 32, 6, 6), (32, 1, 12, 12), (3, 2, 5, 4)]


def _upsample_same_pad_conv(x, weight, bias):
    """What UpsampleConv replaces: nearest 2x upsample, TF SAME padding (1 before, 2 after), 4x4 conv."""
    x = nn.Upsample(scale_factor=2, mode="nearest")(x)  # (n, C, 2H, 2W)
    return F.conv2d(F.pad(x, (1, 2, 1, 2)), weight, bias)


def _reference_decoder(decoder: nn.Sequential) -> nn.Sequential:
    """The decoder in the [nn.Upsample, SamePadConv k4 s1] layout, loaded with the decoder's state dict."""
    layers = list(decoder)
    for i, layer in enumerate(layers):
        if isinstance(layer, UpsampleConv):
            layers[i - 1] = nn.Upsample(scale_factor=2, mode="nearest")
            layers[i] = SamePadConv(layer.in_channels, layer.out_channels, 4, stride=1)
    reference = nn.Sequential(*layers).to(next(decoder.parameters()).dtype)
    reference.load_state_dict(decoder.state_dict())  # strict: the same keys and shapes
    return reference


def _forward_and_grads(fn, x, params, seed=1):
    """fn(x) and the gradients of a random projection of it w.r.t. x and params."""
    x = x.detach().requires_grad_()
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return (y, *torch.autograd.grad(y, (x, *params), g))


@pytest.mark.parametrize("form", ["forward", "transposed_conv", "phase_conv"])
@pytest.mark.parametrize("c_in, c_out, h, w", UPSAMPLE_CONVS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_upsample_conv_equals_upsample_then_same_pad_conv(form, c_in, c_out, h, w, dtype):
    """Output and input / weight / bias gradients equal upsample + pad + conv to rounding.

    float64: to 1e-12 relative. float32: to 1e-5 of each tensor's largest magnitude, since the weight and
    bias gradients are float32 sums over up to 2,000 terms per element, taken in another order.
    """
    torch.manual_seed(0)
    conv = UpsampleConv(c_in, c_out).to(dtype)
    with torch.no_grad():
        conv.bias.normal_()  # non-zero, so that a wrong bias layout shows
    x = torch.randn(3, c_in, h, w, dtype=dtype)  # an odd batch
    params = (conv.weight, conv.bias)
    got = _forward_and_grads(getattr(conv, form), x, params)
    expected = _forward_and_grads(lambda v: _upsample_same_pad_conv(v, *params), x, params)
    assert got[0].shape == (3, c_out, 2 * h, 2 * w)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), got, expected):
        if dtype == torch.float64:
            tol = {"rtol": 1e-12, "atol": 1e-12}
        else:
            tol = {"rtol": 0.0, "atol": 1e-5 * b.abs().max().item()}
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("architecture", PAPER)
def test_decoder_equals_the_upsample_conv_layout_with_the_same_state_dict(architecture):
    """The decoder's state dict loads strictly into the [nn.Upsample, conv] layout, which computes the same."""
    shape, hidden, _ = PAPER[architecture]
    decoder = _cell(architecture).decoder.double()
    reference = _reference_decoder(decoder)
    h = torch.rand(5, hidden, dtype=torch.float64)
    got = _forward_and_grads(decoder, h, list(decoder.parameters()))
    expected = _forward_and_grads(reference, h, list(reference.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_shipped_flying_shapes_weights_load_unchanged_and_decode_as_before():
    """The shipped checkpoint's cell state dict loads strictly; its decoder matches the upsample + conv layout."""
    path = Path(__file__).resolve().parents[1] / "weights" / "flying_shapes.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "em.cell."
    cell = _cell("flying_shapes")
    cell.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    reference = _reference_decoder(cell.decoder)
    h = torch.rand(3, 100)
    with torch.no_grad():
        torch.testing.assert_close(cell.decoder(h), reference(h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c_in, c_out, size", [(1, 32, 28), (32, 64, 14), (1, 32, 24), (32, 64, 12), (64, 128, 6)])
def test_encoder_conv_padding_by_the_conv_equals_an_explicit_pad(c_in, c_out, size):
    """Stride-2 k4 SAME padding on the encoders' even maps is 1/1: the conv's own padding gives the same."""
    assert same_padding(size, 4, 2) == (1, 1)
    torch.manual_seed(0)
    conv = SamePadConv(c_in, c_out, 4, stride=2)
    with torch.no_grad():
        conv.bias.normal_()
    x, params = torch.randn(3, c_in, size, size), (conv.weight, conv.bias)
    got = _forward_and_grads(conv, x, params)
    expected = _forward_and_grads(lambda v: F.conv2d(F.pad(v, (1, 1, 1, 1)), *params, stride=2), x, params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_asymmetric_same_padding_still_pads_one_before_two_after_the_odd_extra():
    """On an odd map (7 -> 4 with k4 s2) TF pads 1 before and 2 after, which no symmetric conv padding gives."""
    torch.manual_seed(0)
    conv = SamePadConv(2, 3, 4, stride=2)
    x = torch.randn(3, 2, 7, 7)
    expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (3, 3, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (5, 7)])
def test_layer_norm_kernel_equals_the_formula_forward_and_backward(shape, dtype):
    """The fused kernel (group norm on maps, layer norm on vectors) is layer_norm(x) * weight + bias, gradients too."""
    torch.manual_seed(0)
    norm = ChannelLayerNorm(shape[1]).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(shape, dtype=dtype) * 3.0 + 1.0
    view = (1, -1) + (1,) * (len(shape) - 2)

    def formula(x):
        return F.layer_norm(x, x.shape[1:], eps=norm.eps) * norm.weight.view(view) + norm.bias.view(view)

    params = (norm.weight, norm.bias)
    for got, want in zip(_forward_and_grads(norm, x, params), _forward_and_grads(formula, x, params)):
        torch.testing.assert_close(got, want)


def test_layer_norm_under_bf16_autocast_keeps_bf16_activations_and_float32_parameter_gradients():
    """bf16 in, bf16 out, float32 parameter gradients within bf16 rounding of the float32 ones."""
    torch.manual_seed(0)
    for shape in [(8, 4, 6, 6), (8, 12)]:
        norm = ChannelLayerNorm(shape[1])
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
        x = torch.randn(shape)
        want = _forward_and_grads(norm, x, (norm.weight, norm.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, gx, gw, gb = _forward_and_grads(norm, x.bfloat16(), (norm.weight, norm.bias))
        assert (y.dtype, gx.dtype, gw.dtype, gb.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32, torch.float32)
        for got, ref in zip((y, gx, gw, gb), want):
            torch.testing.assert_close(got.float(), ref, atol=0.05 * ref.abs().max().item(), rtol=0.02)


@pytest.mark.parametrize("architecture", PAPER)
def test_activations_stay_bf16_between_layers_under_bf16_autocast(architecture):
    """No layer norm promotes back to float32, so no layer re-casts; only the output sigmoid is float32."""
    shape, hidden, sigmoid = PAPER[architecture]
    cell = _cell(architecture)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for net, x in ((cell.encoder, torch.randn(3, *shape)), (cell.decoder, torch.rand(3, hidden))):
            for layer in net:
                x = layer(x)
                if isinstance(layer, Standardize):  # reads the float32 input before the first conv
                    continue
                want = torch.float32 if isinstance(layer, OutputSigmoid) else torch.bfloat16
                assert x.dtype == want, f"{type(layer).__name__} gives {x.dtype}"
        delta = torch.randn(3, *shape)
        psi, _ = cell(delta, cell.init_state(3, delta))
    assert psi.dtype == (torch.float32 if sigmoid else torch.bfloat16)  # a linear output is cast by NeuralEM
