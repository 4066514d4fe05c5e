"""Time one training step of the paper's static-shapes recipe (B=64, K=4, 15 EM steps, 28x28).

    python benchmarks/bench_train_step.py [--m_step rnn_em|n_em] [--repeats 20] [--threads 1 2]

Prints milliseconds per step (forward, loss, backward, Adam) for float32 and bf16 autocast, eager and
with ``model.compile`` (torch.compile of the unroll and its loss), for each thread count, and each
ratio against eager float32 on the first thread count, measured in the same run. Compiling takes
about a minute per precision the first time (then it is cached on disk). Run on an idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from nem_lightning.module import NEMLightningModule


def time_step(m_step: str, threads: int, bf16: bool, compiled: bool, repeats: int) -> float:
    """Median seconds of forward + loss + backward + Adam step on a fixed random binary batch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = NEMLightningModule(m_step=m_step, compile=compiled)
    step = model._compiled_unroll_and_loss if compiled else model._unroll_and_loss
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    frames = (torch.rand(64, 1, 1, 28, 28) < 0.15).float()
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss, _ = step(frames)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        if i >= 3:  # warm-up (and compilation)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m_step", default="rnn_em", choices=["rnn_em", "n_em"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.m_step}, batch 64, K=4, 15 steps, median of {args.repeats}")
    baseline = None
    for threads in args.threads:
        for bf16 in (False, True):
            for compiled in (False, True):
                seconds = time_step(args.m_step, threads, bf16, compiled, args.repeats)
                baseline = baseline or seconds
                label = f"{threads} thread{'s' if threads > 1 else ''}, {'bf16' if bf16 else 'float32'}, "
                label += "compiled" if compiled else "eager"
                print(f"  {label:32s} {seconds * 1000:7.1f} ms/step   x{baseline / seconds:4.2f} vs float32 eager")


if __name__ == "__main__":
    main()
