"""Loader and validation throughput of a config, against its training step: are data and evaluation ever the bottleneck?

    python benchmarks/bench_loader.py --config configs/flying_shapes.yaml [--batches 100]

Prints milliseconds per training batch delivered by the config's DataLoader (its workers and in-memory setting),
the time to validate the first 1,000 validation sequences (unroll, loss and scores, no gradients, the config's
precision), and both as a share of one epoch of training steps timed here with the same model.
"""

from __future__ import annotations

import argparse
import time

import torch

from nem_lightning.data import GroupingDataModule
from nem_lightning.module import NEMLightningModule
from nem_lightning.options import load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/flying_shapes.yaml")
    parser.add_argument("--batches", type=int, default=100, help="training batches to time from the loader")
    parser.add_argument("--steps", type=int, default=3, help="training steps to time (after one warm-up)")
    args = parser.parse_args(argv)
    config = load_config(args.config)  # with its base (the shared model block)
    data = GroupingDataModule(**config["data"])
    data.prepare_data()
    data.setup("fit")
    bf16 = config.get("trainer", {}).get("precision") == "bf16-mixed"
    model = NEMLightningModule(**{**config["model"], "compile": False})
    model.setup("fit")  # no trainer: scores read their label bound from each batch
    print(
        f"{args.config}: batch {data.hparams.batch_size}, {data.hparams.num_workers} workers, "
        f"in_memory={data.hparams.in_memory}, {'bf16' if bf16 else 'float32'}, {torch.get_num_threads()} threads"
    )

    loader = iter(data.train_dataloader())
    next(loader)  # workers start
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(loader)
    load = (time.perf_counter() - start) / args.batches

    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    times = []
    for i in range(args.steps + 1):
        begin = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss, _ = model.unroll_and_loss(batch["features"])
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - begin)
    step = sorted(times)[len(times) // 2]

    model.eval()
    begin = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i, val_batch in enumerate(data.val_dataloader()):
            model.validation_step(val_batch, i)
        scores = model.val_scores.compute()
    validate = time.perf_counter() - begin
    epoch = len(data.train_dataloader()) * step
    sequences = len(data.dataset("validation"))
    print(f"  loader: {load * 1000:.1f} ms/batch ({load / step:.1%} of a {step * 1000:.0f} ms training step)")
    print(
        f"  validation of {sequences} sequences: {validate:.1f} s ({validate / epoch:.2%} of a {epoch / 60:.1f}-minute "
        f"epoch of training steps); val AMI of these random weights {scores['ami'].item():.3f}"
    )


if __name__ == "__main__":
    main()
