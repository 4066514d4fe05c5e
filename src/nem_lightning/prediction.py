"""Write the groupings of ``nem predict`` to one HDF5 file.

Example: ``nem predict --config configs/shapes.yaml --ckpt_path <checkpoint> --output out/predictions.h5``
(``nem predict`` adds the writer itself, for ``--output``).

The file holds one row per sample, ordered by the sample's index in the predicted split (each index once):

    index  (N,)                  int64    sample index in the split
    gamma  (N, T, K, H, W)       float32  responsibilities after each E-step t = 1..T
    pred   (N, T, K, C, H, W)    float32  per-component predictions psi after each M-step
    mask   (N, T, H, W)          uint8    argmax_k gamma (first maximum on ties, as the metrics)
    groups (N, T or 1, H, W)     int64    true groups, aligned to the steps      } only when predict_step
    ami    (N,)                  float64  AMI of the last step, max normaliser   } returns ``groups``
    ari    (N,)                  float64  ARI of the last step                   }

``ami``/``ari`` score ``mask[:, -1]`` against ``groups[:, -1]`` over the pixels whose group is not 0; a
sample without such pixels has nothing to score and reads NaN. Root attributes: ``k``, ``steps``,
``num_samples``, ``ami_normaliser`` ("max"), ``ignore_group`` (0), ``source`` (when given).

The file is written once, at the end of prediction, through a temporary file in the same folder that is
renamed over ``output``: an existing file is replaced, and a failed run leaves no partial file. With
several processes each rank writes what it predicted to ``<stem>.rank<r><suffix>`` (no gather); each rank
predicts its own share of the samples (no padding), so every index appears in exactly one rank file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import h5py
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from nem_lightning.errors import ConfigError
from nem_lightning.files import atomic_path
from nem_lightning.metrics import adjusted_mutual_info, adjusted_rand_index

_OPTION = "--output"
_SCORE_CHUNK = 1024  # samples scored per metrics call, bounding the temporaries


def _numpy(value: Any) -> np.ndarray:
    """A CPU numpy array from a tensor (half precision widened) or array-like."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


class HDF5PredictionWriter(BasePredictionWriter):
    """Collect what ``predict_step`` returns and write it, sorted by sample index, to one HDF5 file.

    ``predict_step`` must return a dict with ``gammas`` (B, T, K, H, W), ``preds`` (B, T, K, C, H, W),
    ``index`` (B,) (else Lightning's batch indices are used) and optionally ``groups`` (B, T or 1, H, W).
    The file layout is described in the module docstring.

    Args:
        output: HDF5 file to write; with several processes, ``<stem>.rank<r><suffix>`` per rank.
        source: data file the predictions came from, stored as the ``source`` attribute.
        write_interval: only ``epoch``: the file is written once, after the last batch.
    """

    def __init__(
        self,
        output: str = "predictions.h5",
        source: Optional[str] = None,
        write_interval: Literal["epoch"] = "epoch",
    ) -> None:
        if write_interval != "epoch":
            raise ConfigError(f"HDF5PredictionWriter writes once: write_interval must be epoch, not {write_interval!r}")
        super().__init__(write_interval)
        self.output, self.source = str(output), source

    def path_for(self, global_rank: int, world_size: int) -> Path:
        """The file this rank writes: ``output`` alone, or ``<stem>.rank<r><suffix>`` with several processes."""
        path = Path(self.output)
        if path.is_dir():
            raise ConfigError(f"{_OPTION} {self.output!r} is a directory; name a file, e.g. {path / 'predictions.h5'}")
        if world_size > 1:
            path = path.with_name(f"{path.stem}.rank{global_rank}{path.suffix or '.h5'}")
        return path

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.path_for(trainer.global_rank, trainer.world_size)  # refuse a directory before predicting

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        path = self.path_for(trainer.global_rank, trainer.world_size)
        if predictions and isinstance(predictions[0], list):
            raise ConfigError("HDF5PredictionWriter writes one predict dataloader per file; got several")
        if not predictions:
            rank_zero_warn(f"HDF5PredictionWriter: no predictions, {path} not written")
            return
        if len(batch_indices) == 1 and batch_indices[0] and isinstance(batch_indices[0][0], Sequence):
            batch_indices = batch_indices[0]  # Lightning passes them per dataloader, then per batch
        arrays = self._collect(predictions, batch_indices)
        self._write(path, arrays)
        rank_zero_info(f"Wrote {len(arrays['index'])} predictions to {path}")

    @staticmethod
    def _collect(predictions: Sequence[Any], batch_indices: Sequence[Any]) -> dict[str, np.ndarray]:
        """Concatenate the batches, sort by sample index and drop repeated indices."""
        parts: dict[str, list[np.ndarray]] = {"index": [], "gamma": [], "pred": [], "groups": []}
        for i, out in enumerate(predictions):
            if not isinstance(out, dict) or "gammas" not in out or "preds" not in out:
                got = sorted(out) if isinstance(out, dict) else type(out).__name__
                raise ConfigError(f"HDF5PredictionWriter needs a dict with 'gammas' and 'preds', got {got}")
            index = out["index"] if "index" in out else (batch_indices[i] if i < len(batch_indices) else None)
            if index is None:
                raise ConfigError("HDF5PredictionWriter needs 'index' from predict_step or Lightning's batch indices")
            parts["index"].append(_numpy(index).astype(np.int64).reshape(-1))
            parts["gamma"].append(_numpy(out["gammas"]).astype(np.float32, copy=False))  # (B, T, K, H, W)
            parts["pred"].append(_numpy(out["preds"]).astype(np.float32, copy=False))  # (B, T, K, C, H, W)
            if "groups" in out:
                parts["groups"].append(_numpy(out["groups"]).astype(np.int64, copy=False))  # (B, T or 1, H, W)
        if parts["groups"] and len(parts["groups"]) != len(parts["index"]):
            raise ConfigError("HDF5PredictionWriter: predict_step returned 'groups' for some batches only")
        arrays = {name: np.concatenate(p) for name, p in parts.items() if p}
        _check_shapes(arrays)
        n = len(arrays["index"])
        index, first = np.unique(arrays.pop("index"), return_index=True)  # sorted, each index once
        if len(first) != n or not np.array_equal(first, np.arange(n)):
            arrays = {name: a[first] for name, a in arrays.items()}  # copies only when out of order
        arrays["index"] = index
        gamma = arrays["gamma"]
        mask_dtype = np.uint8 if gamma.shape[2] <= 256 else np.int64
        arrays["mask"] = gamma.argmax(2).astype(mask_dtype)  # (N, T, H, W), first maximum on ties
        if "groups" in arrays:
            arrays["ami"], arrays["ari"] = _last_step_scores(gamma, arrays["groups"])
        return arrays

    def _write(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        """Write every dataset to a temporary file next to ``path``, then rename it over ``path``."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w-") as f:
            for name in ("index", "gamma", "pred", "mask", "groups", "ami", "ari"):
                if name in arrays:
                    f.create_dataset(name, data=arrays[name])
            _, T, K = arrays["gamma"].shape[:3]
            f.attrs.update(k=K, steps=T, num_samples=len(arrays["index"]), ami_normaliser="max", ignore_group=0)
            if self.source is not None:
                f.attrs["source"] = str(self.source)


def _check_shapes(arrays: dict[str, np.ndarray]) -> None:
    """Refuse outputs whose batch sizes, steps, K or image sizes disagree."""
    n, gamma, pred = len(arrays["index"]), arrays["gamma"], arrays["pred"]
    groups = arrays.get("groups")
    ok = gamma.ndim == 5 and pred.ndim == 6 and len(gamma) == len(pred) == n and pred.shape[:3] == gamma.shape[:3]
    ok = ok and pred.shape[-2:] == gamma.shape[-2:]
    if groups is not None:
        ok = ok and groups.ndim == 4 and len(groups) == n and groups.shape[1] in (1, gamma.shape[1])
        ok = ok and groups.shape[-2:] == gamma.shape[-2:]
    if not ok:
        shapes = {name: a.shape for name, a in arrays.items()}
        raise ConfigError(
            "HDF5PredictionWriter needs index (B,), gammas (B, T, K, H, W), preds (B, T, K, C, H, W) and "
            f"optional groups (B, T or 1, H, W) from predict_step; got {shapes}"
        )


def _last_step_scores(gamma: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample AMI (max normaliser) and ARI of the last step; NaN where no pixel has a group other than 0.

    Args:
        gamma: (N, T, K, H, W) responsibilities.
        groups: (N, T or 1, H, W) true groups aligned to the steps.

    Returns:
        AMI (N,) and ARI (N,) float64.
    """
    ami, ari = np.empty(len(gamma)), np.empty(len(gamma))
    for s in range(0, len(gamma), _SCORE_CHUNK):
        g = torch.from_numpy(gamma[s : s + _SCORE_CHUNK, -1])  # (n, K, H, W)
        y = torch.from_numpy(groups[s : s + _SCORE_CHUNK, -1])  # (n, H, W)
        a, valid = adjusted_mutual_info(g, y, ignore_index=0, average_method="max")
        r, _ = adjusted_rand_index(g, y, ignore_index=0)
        ami[s : s + len(g)] = a.masked_fill(~valid, float("nan")).numpy()
        ari[s : s + len(g)] = r.masked_fill(~valid, float("nan")).numpy()
    return ami, ari


def check_writable(output: str) -> None:
    """Refuse, before any compute, an output file that cannot be written (missing folders are created later)."""
    if Path(output).is_dir():
        raise ConfigError(f"--output {output!r} is a directory; name an .h5 file")
    folder = Path(output).resolve().parent
    while not folder.exists():  # the nearest folder that exists is where the new ones will be made
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"--output {output!r}: {str(folder)!r} is a file, not a folder")
    try:  # a real write: permission bits alone say nothing for root or a read-only file system
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"--output {output!r}: folder {str(folder)!r} is not writable ({err.strerror})") from None
