"""The metrics under DDP: two gloo ranks holding uneven shares of the images reduce to the single-process
values."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nem_lightning.metrics import AdjustedMutualInfo, AdjustedRandIndex, GroupingConfidence, SequenceGroupingMetrics


def _ddp_data():
    """Eight images and two-step sequences; image 6 has no scored pixels."""
    g = torch.Generator().manual_seed(11)
    gamma = torch.rand(8, 2, 3, 6, 6, generator=g)
    groups = torch.randint(0, 4, (8, 2, 6, 6), generator=g)
    groups[6] = 0
    return gamma, groups


def _all_metrics(gamma: torch.Tensor, groups: torch.Tensor) -> dict[str, torch.Tensor]:
    """Update every metric class with the given slice and return their computed values."""
    flat_gamma, flat_groups = gamma[:, -1], groups[:, -1]
    out = {}
    for name, metric in [
        ("ami", AdjustedMutualInfo(num_labels=4)),
        ("ari", AdjustedRandIndex(num_labels=4)),
        ("confidence", GroupingConfidence()),
    ]:
        metric.update(flat_gamma, flat_groups)
        out[name] = metric.compute()
        with metric.sync_context():  # states hold the local counts outside compute()
            out[f"{name}_skipped"] = metric.skipped.clone()
    seq = SequenceGroupingMetrics(num_steps=2, step_weights="all", num_labels=4)
    seq.update(gamma, groups)
    out.update({f"seq_{k}": v for k, v in seq.compute().items()})
    with seq.sync_context():
        out["seq_skipped"] = seq.skipped.clone()
    return out


def _ddp_worker(rank: int, store_path: str, out_dir: str) -> None:
    """One gloo rank over loopback: rank 0 scores images 0..4, rank 1 images 5..7."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        gamma, groups = _ddp_data()
        part = slice(0, 5) if rank == 0 else slice(5, 8)
        torch.save(_all_metrics(gamma[part], groups[part]), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process_on_uneven_split(tmp_path):
    """Two gloo ranks holding 5 and 3 images reduce to exactly the single-process values."""
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = _all_metrics(*_ddp_data())
    assert single["ami_skipped"].item() == 1
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert synced.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(synced[key], value, rtol=0, atol=1e-12, msg=key)
