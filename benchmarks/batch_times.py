"""A callback that times every training batch inside ``nem fit`` and prints them when training ends.

    PYTHONPATH=benchmarks nem fit --config configs/flying_shapes.yaml --trainer.max_steps 14 \\
        --trainer.limit_val_batches 0 --data.train_size 1280 --trainer.callbacks+=batch_times.BatchTimes

Each time runs from the batch's start hook to its end hook (forward, backward, optimiser step and the loop's own
work; loading the next batch excluded). The first two batches (warm-up) are left out of the median it prints.
"""

from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl

WARMUP = 2


class BatchTimes(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module) -> None:
        print("batch seconds:", " ".join(f"{s:.2f}" for s in self.seconds))
        timed = self.seconds[WARMUP:]
        if timed:
            print(f"median seconds per batch after {WARMUP} warm-up {statistics.median(timed):.3f} over {len(timed)}")
