"""Time one training update of every shipped architecture and compare it with a FLOP floor.

    python benchmarks/bench_train_step.py                          # all four recipes, CPU, 1 and 2 threads
    python benchmarks/bench_train_step.py --recipes flying_shapes --threads 2 --repeats 10
    python benchmarks/bench_train_step.py --device cuda            # adds reduce-overhead (CUDA graph) rows

One update = the EM unroll, the outer loss and the upper-bound loss, backward and an Adam step, on a
fixed random batch of the recipe's size, through the module's own eager or compiled training path
(``compiled-step``: the eager unroll calling a compiled M-step network, one EM step's graph).
Recipes take their model options from the shipped configs (configs/<recipe>.yaml):

    shapes         fc RNN-EM, K=4, 15 steps, B=64, 28x28 static images
    shapes_nem     N-EM, K=4, 15 steps, B=64, 28x28 static images
    flying_shapes  conv RNN-EM, K=3, 20 steps, B=64, 21 frames of 28x28
    flying_mnist   conv RNN-EM, K=2, 20 steps, B=64, 21 frames of 24x24 (grey)

For each recipe it prints ms per update for float32 / bf16 autocast x eager / compiled (x CUDA graphs
on a GPU) per thread count, the ratio to the first row, and the ratio to a FLOP floor measured in the
same run: the update's FLOPs (``torch.utils.flop_counter``, forward and backward) divided by the rate
of a float32 2048x2048 matmul timed on the spot, and the same over a bf16 matmul's rate (the bf16 floor).
On CUDA it also prints sequences per second.
Compiling takes a minute or two per row the first time. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nem_lightning.module import NEMLightningModule
from nem_lightning.networks import UpsampleConv
from nem_lightning.options import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = ("shapes", "shapes_nem", "flying_shapes", "flying_mnist")
BATCH = 64


def build(recipe: str, compile_mode: str | None, device: str) -> tuple[NEMLightningModule, torch.Tensor]:
    """The recipe's model (options from its config) and a fixed random batch of its shape."""
    options = load_config(CONFIGS / f"{recipe}.yaml")["model"]  # with the shared model block
    options.update(compile=compile_mode is not None, compile_mode=compile_mode or "default")
    torch.manual_seed(0)
    model = NEMLightningModule(**options).to(device)
    frames = 1 if options.get("architecture", "fc") == "fc" else options["steps"] + 1  # static or video
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(BATCH, frames, *options["input_shape"], generator=generator)
    if options.get("distribution", "bernoulli") == "bernoulli":
        batch = (batch < 0.15).float()
    return model, batch.to(device)


def update_fn(model: NEMLightningModule, compiled: bool, bf16: bool, device: str):
    """One training update as a closure, returning the loss."""
    step = partial(model.unroll_and_loss, compiled=compiled)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def update(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            _, loss, _ = step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        return loss.total.detach()

    return update


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_update(recipe: str, device: str, bf16: bool, compile_mode: str | None, repeats: int, warmup: int) -> float:
    """Median seconds per update after ``warmup`` updates (which include compilation)."""
    step_only = compile_mode == "step"
    model, batch = build(recipe, None if step_only else compile_mode, device)
    if step_only:  # one EM step's network compiled, called 20 times by the eager unroll
        model.em.cell.compile(dynamic=False)
    update = update_fn(model, compile_mode is not None and not step_only, bf16, device)
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        loss = update(batch)
        sync(device)
        if i == 0 and compile_mode is not None:
            print(f"    (first update, compile included: {time.perf_counter() - start:.1f} s)", flush=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{recipe}: non-finite loss {loss.item()}")
    return sorted(times)[len(times) // 2]


def _paper_upsample_conv(layer: UpsampleConv, x: torch.Tensor) -> torch.Tensor:
    """The decoder layer as the paper specifies it: 2x nearest upsample, TF SAME padding (1, 2), a k4 conv."""
    x = F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1, 2, 1, 2))
    return F.conv2d(x, layer.weight, layer.bias)


def update_flops(recipe: str) -> int:
    """FLOPs of one update's forward and backward of the network as the paper specifies it (float32, eager, CPU;
    Adam's few FLOPs left out). The decoder's upsample + conv layers are counted as written, not as the folded
    kernels that compute them, so a rewrite that needs fewer FLOPs shows as a gain against the floor."""
    model, batch = build(recipe, None, "cpu")
    for layer in model.modules():
        if isinstance(layer, UpsampleConv):
            layer.forward = partial(_paper_upsample_conv, layer)
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss, _ = model.unroll_and_loss(batch)
        loss.total.backward()
    return counter.get_total_flops()


def matmul_rate(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, best of ``repeats``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def profile_update(recipe: str, device: str, bf16: bool, rows: int = 12) -> None:
    """Print the operators that take the most time in one eager update (after one warm-up update)."""
    from torch.profiler import ProfilerActivity, profile

    model, batch = build(recipe, None, device)
    update = update_fn(model, False, bf16, device)
    update(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        update(batch)
        sync(device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads (ignored on CUDA)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bf16"], choices=["float32", "bf16"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=None,
        help="eager, compiled (the unroll and loss), compiled-step (one EM step's network), reduce-overhead (CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also print the top operators of one eager update")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_train_step: --device cuda but no GPU is visible")
    modes = args.modes or (["eager", "compiled", "reduce-overhead"] if args.device == "cuda" else ["eager", "compiled"])
    threads = [None] if args.device == "cuda" else args.threads
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads max)"
    print(f"torch {torch.__version__}, {name}, batch {BATCH}, median of {args.repeats} after {args.warmup} warm-up")
    for recipe in args.recipes:
        flops = update_flops(recipe)
        print(f"\n{recipe}: {flops / 1e9:.1f} GFLOP per update (forward + backward)")
        baseline = None
        for n in threads:
            if n is not None:
                torch.set_num_threads(n)
            rate, rate_bf16 = matmul_rate(args.device, torch.float32), matmul_rate(args.device, torch.bfloat16)
            floor, floor_bf16 = flops / rate, flops / rate_bf16
            where = f"{n} thread{'s' if n > 1 else ''}" if n else "GPU"
            print(
                f"  {where}: float32 matmul {rate / 1e9:.0f} GFLOP/s, floor {floor * 1000:.1f} ms/update; "
                f"bf16 matmul {rate_bf16 / 1e9:.0f} GFLOP/s, floor {floor_bf16 * 1000:.1f} ms/update"
            )
            for precision in args.precisions:
                for mode in modes:
                    compile_mode = {"eager": None, "compiled": "default", "compiled-step": "step"}.get(mode, mode)
                    label = f"{where}, {precision}, {mode}"
                    try:
                        seconds = time_update(
                            recipe, args.device, precision == "bf16", compile_mode, args.repeats, args.warmup
                        )
                    except Exception as err:  # noqa: BLE001 - one failed row must not hide the others
                        print(f"    {label:36s} failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
                        continue
                    baseline = baseline or seconds
                    extra = f"  {BATCH / seconds:8.0f} seq/s" if args.device == "cuda" else ""
                    print(
                        f"    {label:36s} {seconds * 1000:8.1f} ms/update  x{baseline / seconds:5.2f} vs first row"
                        f"  {seconds / floor:5.2f}x float32 floor  {seconds / floor_bf16:5.2f}x bf16 floor{extra}",
                        flush=True,
                    )
        if args.profile:
            profile_update(recipe, args.device, "bf16" in args.precisions)


if __name__ == "__main__":
    main()
