"""Time one training step of the paper's static-shapes recipe (B=64, K=4, 15 EM steps, 28x28).

    python benchmarks/bench_train_step.py [--m_step rnn_em|n_em] [--repeats 20]

Prints milliseconds per step for float32 and bf16 autocast, with 1 and 2 torch threads, and each
ratio against float32 with 1 thread measured in the same run. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from nem_lightning.losses import outer_loss, step_weights
from nem_lightning.module import NEMLightningModule


def time_step(m_step: str, threads: int, bf16: bool, repeats: int) -> float:
    """Median seconds of forward + backward + Adam step on a fixed random binary batch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = NEMLightningModule(m_step=m_step)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    frames = (torch.rand(64, 1, 1, 28, 28) < 0.15).float()
    weights = step_weights("last", 15)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(frames)
            loss = outer_loss(out.preds, out.gammas, out.targets, "bernoulli", weights).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m_step", default="rnn_em", choices=["rnn_em", "n_em"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.m_step}, batch 64, K=4, 15 steps, median of {args.repeats}")
    baseline = None
    for threads in (1, 2):
        for bf16 in (False, True):
            seconds = time_step(args.m_step, threads, bf16, args.repeats)
            baseline = baseline or seconds
            label = f"{threads} thread{'s' if threads > 1 else ''}, {'bf16 autocast' if bf16 else 'float32'}"
            print(f"  {label:28s} {seconds * 1000:7.1f} ms/step   x{baseline / seconds:4.2f} vs float32 1 thread")


if __name__ == "__main__":
    main()
