"""Shared fixtures: tiny data files, generated once per test session."""

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from nem_lightning.generators import generate_dataset

# W&B must never log in or touch the network from the tests; tests that want offline mode set it.
os.environ["WANDB_MODE"] = "disabled"


@pytest.fixture(scope="session")
def shapes_file(tmp_path_factory):
    """A tiny static-shapes file from our generator: 96 / 48 / 48 samples."""
    return str(
        generate_dataset("shapes", tmp_path_factory.mktemp("data") / "shapes.h5", sizes=(96, 48, 48), progress=False)
    )


def write_official_layout(path, splits, dtype=np.uint8, extra=True):
    """Write a file in the official layout with plain h5py, as another tool would.

    ``splits`` maps split name to (features, groups) arrays shaped (T, N, H, W, 1).
    """
    with h5py.File(path, "w") as f:
        for split, (features, groups) in splits.items():
            g = f.create_group(split)
            g.create_dataset("features", data=features.astype(dtype))
            g.create_dataset("groups", data=groups.astype(dtype))
            if extra:
                g.create_dataset("overlaps", data=np.zeros_like(groups, dtype=np.uint8))
    return str(path)


def random_static(n, seed=0, size=28):
    """Random binary features and groups 0..3, shaped (1, n, size, size, 1)."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, size=(1, n, size, size, 1))
    return (groups > 0).astype(np.float32), groups


@pytest.fixture(scope="session")
def foreign_shapes_file(tmp_path_factory):
    """A static file in the official layout written by plain h5py (uint8, with an extra dataset)."""
    path = tmp_path_factory.mktemp("foreign") / "foreign.h5"
    return write_official_layout(
        path, {s: random_static(40, i) for i, s in enumerate(("training", "validation", "test"))}
    )


def csv_logger(save_dir, config):
    """CLI arguments replacing a config's loggers by one CSVLogger in ``save_dir`` named after the config."""
    name = Path(config).stem
    return [
        "--trainer.logger",
        json.dumps(
            {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(save_dir), "name": name},
            }
        ),
    ]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Run every test in its own folder, so nothing (runs/, figures/) lands in the working tree."""
    monkeypatch.chdir(tmp_path)


def reference_test_ami(model, path, score_steps="last"):
    """`nem test`'s AMI recomputed independently: the model's groupings of every test sample, scored with sklearn.

    Per image and step: sklearn's AMI (``max`` normaliser) of argmax γ against the true groups over the pixels
    whose group is not 0; averaged over images, then over the scored steps (the last, or all).
    """
    import torch
    from pytorch_lightning.utilities import move_data_to_device
    from sklearn.metrics import adjusted_mutual_info_score

    from nem_lightning.data import GroupingDataModule

    dm = GroupingDataModule(path)
    batch = dm.batch("test", list(range(len(dm.dataset("test")))))
    model.eval()
    with torch.no_grad():
        shown = model.groupings(move_data_to_device(batch, model.device), "test")
    masks, groups = shown["gammas"].float().argmax(2).cpu().numpy(), shown["groups"].cpu().numpy()
    steps = range(masks.shape[1]) if score_steps == "all" else [masks.shape[1] - 1]
    per_step = []
    for t in steps:
        scores = []
        for b in range(masks.shape[0]):
            truth = groups[b, min(t, groups.shape[1] - 1)]
            keep = truth > 0
            scores.append(adjusted_mutual_info_score(truth[keep], masks[b, t][keep], average_method="max"))
        per_step.append(np.mean(scores))
    return float(np.mean(per_step))
