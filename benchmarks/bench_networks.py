"""Time the conv networks' exact rewrites against the layout they replace, interleaved in one run.

    python benchmarks/bench_networks.py --threads 1
    python benchmarks/bench_networks.py --threads 2 --precisions float32 bf16 --repeats 9

"old" is the upsample + conv layout as it was: ``nn.Upsample`` then ``F.pad`` (1 before, 2 after) then a
4x4 conv in the decoder, ``F.pad`` then conv in the encoder, and layer norms whose float32 affine turns
bf16 activations back into float32. "new" is ``nem_lightning.networks`` as it is: the upsample + conv
folded onto the source map (``UpsampleConv``), the encoder's symmetric padding done by the conv, layer
norms that keep the activation dtype. Both run the same weights. Rows, forward + backward each:

    layer   one upsample + conv layer of each decoder: old, the transposed-conv form, the phase-conv form
    decoder flying shapes decoder, (64 * K = 192, hidden 100) -> (192, 1, 28, 28)
    encoder flying shapes encoder, (192, 1, 28, 28) -> (192, 512)
    update  one flying shapes training update through the module's update path (bench_train_step.py)

Every row prints the median ms of ``--repeats`` interleaved runs (old, new, ... in turn, after a warm-up)
and old / new. ``channels_last`` rows are a measurement only (the conv inputs made channels-last). bf16
autocast is emulated (and slow) on CPUs without AVX-512 BF16 or AMX; its ratios are still meaningful.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_train_step import build, update_fn
from torch import Tensor, nn

from nem_lightning.networks import ChannelLayerNorm, SamePadConv, UpsampleConv, build_cell, same_padding

BATCH = 64
SHAPES_K = 3  # flying shapes: 64 sequences x K = 3 components per decoder / encoder call
# (in, out, source size, maps) of every upsample + conv layer: flying shapes (K = 3), flying MNIST (K = 2)
LAYERS = ((64, 32, 7, 192), (32, 1, 14, 192), (128, 64, 3, 128), (64, 32, 6, 128), (32, 1, 12, 128))


class OldUpsampleConv(UpsampleConv):
    """The replaced layout: materialise the 2x upsampled map, pad it 1 before / 2 after, 4x4 conv."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # what nn.Upsample(scale_factor=2) ran
        return F.conv2d(F.pad(x, (1, 2, 1, 2)), self.weight, self.bias)


class OldSamePadConv(SamePadConv):
    """The replaced encoder conv: always an ``F.pad`` copy, then an unpadded conv."""

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride)


class OldChannelLayerNorm(ChannelLayerNorm):
    """The replaced layer norm: the float32 affine promotes bf16 activations to float32."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x, x.shape[1:], eps=self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class ChannelsLastUpsampleConv(UpsampleConv):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


class ChannelsLastSamePadConv(SamePadConv):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


OLD = {UpsampleConv: OldUpsampleConv, SamePadConv: OldSamePadConv, ChannelLayerNorm: OldChannelLayerNorm}
CHANNELS_LAST = {UpsampleConv: ChannelsLastUpsampleConv, SamePadConv: ChannelsLastSamePadConv}


def swapped(module: nn.Module, classes: dict[type, type]) -> nn.Module:
    """A deep copy with each listed module class replaced (same parameters, only ``forward`` differs)."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if type(m) in classes:
            m.__class__ = classes[type(m)]
    if classes is CHANNELS_LAST:  # the weights too, so that oneDNN sees one layout
        module = module.to(memory_format=torch.channels_last)
    return module


def machine() -> str:
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        name = models[0] if models else name
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{name} ({capability}), torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeats`` times after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, medians: dict[str, float]) -> None:
    old = medians["old"]
    cells = [
        f"{name} {s * 1000:8.1f} ms" + ("" if name == "old" else f" (old/{name} x{old / s:.2f})")
        for name, s in medians.items()
    ]
    print(f"  {title:34s} " + "  ".join(cells), flush=True)


def forward_backward(module: Callable[[Tensor], Tensor], x: Tensor, bf16: bool) -> Callable[[], None]:
    def run() -> None:
        inp = x.detach().requires_grad_()  # in the model both nets' inputs depend on the parameters
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = module(inp)
        out.float().sum().backward()

    return run


def bench_layers(bf16: bool, repeats: int, warmup: int) -> None:
    for c_in, c_out, size, n in LAYERS:
        torch.manual_seed(0)
        new = UpsampleConv(c_in, c_out)
        old = swapped(new, OLD)
        x = torch.randn(n, c_in, size, size)
        fns = {
            "old": forward_backward(old, x, bf16),
            "transposed": forward_backward(new.transposed_conv, x, bf16),
            "phase": forward_backward(new.phase_conv, x, bf16),
        }
        report(f"layer {c_in}->{c_out} on {n}x{size}x{size}", interleaved(fns, repeats, warmup))


def bench_nets(rows: list[str], bf16: bool, repeats: int, warmup: int) -> None:
    torch.manual_seed(0)
    cell = build_cell("rnn_em", "flying_shapes", (1, 28, 28), 100, True, True)
    n = BATCH * SHAPES_K
    h, delta = torch.rand(n, 100), torch.randn(n, 1, 28, 28)
    for name, net, x in (("decoder", cell.decoder, h), ("encoder", cell.encoder, delta)):
        if name not in rows:
            continue
        variants = {"old": swapped(net, OLD), "new": net, "channels_last": swapped(net, CHANNELS_LAST)}
        fns = {key: forward_backward(module, x, bf16) for key, module in variants.items()}
        report(f"{name} fwd+bwd, {n} maps", interleaved(fns, repeats, warmup))


def bench_update(bf16: bool, repeats: int, warmup: int) -> None:
    models = {}
    for key in ("old", "new", "channels_last"):
        model, batch = build("flying_shapes", None, "cpu")  # seeded: the same weights and batch each time
        if key != "new":
            model.em.cell = swapped(model.em.cell, OLD if key == "old" else CHANNELS_LAST)
        models[key] = model
    losses = {}
    for key, model in models.items():  # the same draws (noise, initial gamma) for each: the same loss
        torch.manual_seed(1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses[key] = model.unroll_and_loss(batch)[1].total.item()
    updates = {key: update_fn(model, False, bf16, "cpu") for key, model in models.items()}
    fns = {key: partial(update, batch) for key, update in updates.items()}
    report("update (flying shapes, B=64, K=3)", interleaved(fns, repeats, warmup))
    diffs = ", ".join(f"{key} {losses[key] - losses['old']:+.2e}" for key in losses if key != "old")
    print(f"    loss of the first batch (same draws): old {losses['old']:.9g}; difference to old: {diffs}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bf16"])
    parser.add_argument("--rows", nargs="+", default=["layer", "decoder", "encoder", "update"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--update-repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"median of interleaved runs after {args.warmup} warm-up round(s); ratio > 1: faster than old")
    for precision in args.precisions:
        bf16 = precision == "bf16"
        print(f"\n{precision}{' autocast' if bf16 else ''}:")
        if "layer" in args.rows:
            bench_layers(bf16, args.repeats, args.warmup)
        if "decoder" in args.rows or "encoder" in args.rows:
            bench_nets(args.rows, bf16, args.repeats, args.warmup)
        if "update" in args.rows:
            bench_update(bf16, args.update_repeats, 1)


if __name__ == "__main__":
    main()
