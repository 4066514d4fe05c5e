"""Helpers shared by the tests: command lines for `nem`, one-line error checks, an interrupting callback, files
written and read as other tools would, and the independent sklearn references. Fixtures live in conftest.py."""

import json
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import Callback

from nem_lightning import generators
from nem_lightning.cli import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
WEIGHTS = ROOT / "weights"
TINY = (20, 10, 10)  # training, validation and test samples of the generator tests' files


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


class StopAt(Callback):
    """Interrupts training at a given global step, like Ctrl-C or SIGTERM would."""

    def __init__(self, step: int, how: str = "keyboard") -> None:
        self.step, self.how = step, how

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.how == "keyboard":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)


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


def record_scoring(monkeypatch):
    """Patch the sequence metric's update to record what `nem test` scores: a list of (gamma, groups) per batch.

    Call before the run that builds the module. Each entry holds numpy copies of gamma (B, T, K, H, W) and the
    groups each step is scored against (B, T or 1, H, W), exactly the tensors the metric received.
    """
    from nem_lightning.metrics.grouping import SequenceGroupingMetrics

    scored = []
    update = SequenceGroupingMetrics.update

    def recording_update(self, gamma, groups):
        scored.append((gamma.detach().float().cpu().numpy(), groups.cpu().numpy()))
        return update(self, gamma, groups)

    monkeypatch.setattr(SequenceGroupingMetrics, "update", recording_update)
    return scored


def scored_arrays(scored):
    """The recorded batches of `record_scoring` joined: gamma (N, T, K, H, W) and groups (N, T or 1, H, W)."""
    return np.concatenate([gamma for gamma, _ in scored]), np.concatenate([groups for _, groups in scored])


def reference_test_ami(scored, score_steps="last"):
    """`nem test`'s AMI recomputed independently with sklearn from what its metric was given (`record_scoring`).

    Per image and step: sklearn's AMI (``max`` normaliser) of argmax γ against the true groups over the pixels
    whose group is not 0; averaged over images, then over the scored steps (the last, or all). Scoring the very
    γ the test loop produced keeps the comparison exact where an untrained model's γ is nearly tied.
    """
    from sklearn.metrics import adjusted_mutual_info_score

    gammas, groups = scored_arrays(scored)
    masks = gammas.argmax(2)  # (N, T, H, W)
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


def read_h5(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """All arrays of a file, by split and key."""
    with h5py.File(path, "r") as f:
        return {split: {key: f[split][key][()] for key in f[split]} for split in generators.SPLITS}


def paste(sprite: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """A (size, size) canvas with `sprite` at (row, col): the slow, obvious reference."""
    canvas = np.zeros((size, size), dtype=sprite.dtype)
    canvas[row : row + sprite.shape[0], col : col + sprite.shape[1]] = sprite
    return canvas


def sklearn_per_image(score_fn, pred: torch.Tensor, true: torch.Tensor, ignore_index: int | None = 0, **kw):
    """The paper's loop: per image, select the scored pixels first, then call sklearn."""
    out = []
    for p, t in zip(pred.flatten(1).numpy(), true.flatten(1).numpy()):
        keep = np.ones_like(t, dtype=bool) if ignore_index is None else t != ignore_index
        out.append(score_fn(t[keep], p[keep], **kw))
    return np.array(out)


def random_case(B: int, shape: tuple[int, ...], K: int, labels: int, seed: int = 0):
    """Random gamma (B, K, *shape) and true groups (B, *shape) in [0, labels)."""
    g = torch.Generator().manual_seed(seed)
    gamma = torch.rand(B, K, *shape, generator=g)
    groups = torch.randint(0, labels, (B, *shape), generator=g)
    return gamma, groups
