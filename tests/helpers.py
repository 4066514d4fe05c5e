"""Helpers shared by the tests: command lines for `nem`, one-line error checks, files written as other tools
would, and the independent sklearn reference score. Fixtures live in conftest.py."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from nem_lightning.cli import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
WEIGHTS = ROOT / "weights"


def fit_args(config, data_path, out, *extra, batch_size=16, steps=3, workers=None):
    """`nem fit` of a shipped config with the debug overlay on a tiny file, CSV-logged into ``out``."""
    return [
        "fit",
        "--config",
        str(CONFIGS / config),
        "--config",
        str(CONFIGS / "debug.yaml"),
        "--data.path",
        data_path,
        "--data.batch_size",
        str(batch_size),
        *(["--model.steps", str(steps)] if steps is not None else []),
        *(["--data.num_workers", str(workers)] if workers is not None else []),
        *csv_logger(out, config),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]


def test_args(data_path, ckpt, *extra, config="shapes.yaml"):
    """`nem test` of a checkpoint under a shipped config on one file, without a logger."""
    common = ["--config", str(CONFIGS / config), "--data.path", data_path, "--ckpt_path", str(ckpt)]
    return ["test", *common, "--trainer.logger", "false", *extra]


test_args.__test__ = False  # a helper, not a test


def fails_with(capsys, args, code=2):
    """Run `nem` expecting exit ``code`` with exactly one line on stderr (W&B's own lines aside); return it."""
    with pytest.raises(SystemExit) as info:
        run(args)
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("wandb:")]
    assert info.value.code == code and len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


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
