"""Reading grouping datasets in the official HDF5 layout, and the LightningDataModule serving them.

A file holds groups ``training``, ``validation`` and ``test``, each with ``features`` and ``groups``
shaped (T, N, H, W, C) -- time first, then sample. Static data has T = 1. ``groups`` holds 0 for
background and overlaps, 1..n for objects. Extra datasets (``overlaps``, ``masks``, ``collisions``)
are tolerated and ignored. Batches are dicts of ``features`` (B, T, C, H, W) float32, ``groups``
(B, T, H, W) int64, ``index`` (B,) the samples' indices in the split, and ``draw_index``, the same as ints.
Training batches come in an order drawn from (seed, epoch) that a resumed run continues (``EpochShuffle``,
``ResumableLoader``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import h5py
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from nem_lightning.errors import DataError

Split = Literal["training", "validation", "test"]


def _check_values(path: str, split: str, features: np.ndarray, groups: np.ndarray | None, first: int) -> None:
    """Refuse NaN/inf or out-of-range features and non-integer or negative groups."""
    if not np.isfinite(features).all():
        raise DataError(f"{path}: {split}/features has NaN or infinite values (samples from {first})")
    lo, hi = features.min(initial=0.0), features.max(initial=0.0)
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{path}: {split}/features must lie in [0, 1], found values in [{lo:g}, {hi:g}] (samples from {first})"
        )
    if groups is not None and (not np.isfinite(groups).all() or (groups < 0).any() or (groups % 1 != 0).any()):
        raise DataError(f"{path}: {split}/groups must hold non-negative integer labels (samples from {first})")


def inspect_split(path: str, split: str, require_groups: bool = True) -> dict:
    """Check the structure of one split and return its shapes, without reading the data.

    Returns:
        dict with ``frames`` T, ``samples`` N, ``shape`` (C, H, W) and ``has_groups``.

    Raises:
        DataError: naming the file and what was expected.
    """
    if os.path.isdir(path):
        raise DataError(f"data file {path!r} is a directory; expected an HDF5 file in the official layout")
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        if split not in f:
            raise DataError(
                f"{path}: missing split {split!r}; found {sorted(f.keys())}, expected training/validation/test"
            )
        group = f[split]
        if not isinstance(group, h5py.Group) or "features" not in group:
            raise DataError(f"{path}: {split}/features is missing")
        features = group["features"]
        if features.ndim != 5:
            raise DataError(f"{path}: {split}/features has shape {features.shape}; expected rank 5 (T, N, H, W, C)")
        T, N, H, W, C = features.shape
        has_groups = "groups" in group
        if has_groups:
            gshape = group["groups"].shape
            if gshape not in ((T, N, H, W, 1), (T, N, H, W)):
                raise DataError(
                    f"{path}: {split}/groups has shape {gshape}, which does not match features {features.shape}; "
                    f"expected {(T, N, H, W, 1)}"
                )
        elif require_groups:
            raise DataError(f"{path}: {split}/groups is missing (needed to score groupings)")
        if N == 0:
            raise DataError(f"{path}: {split} holds no samples")
    return {"frames": T, "samples": N, "shape": (C, H, W), "has_groups": has_groups}


LOAD_BLOCK = 2000  # samples read at a time when a split is loaded into memory


class GroupingDataset(Dataset):
    """One split of an official-layout file, restricted to its first ``size`` samples.

    The file is opened lazily in whichever process reads it first (h5py handles cannot be pickled
    into DataLoader workers). With ``in_memory`` the whole subset is read and checked once; otherwise
    each batch is read from disk and checked as it comes.

    Args:
        path: the HDF5 file.
        split: ``training``, ``validation`` or ``test``.
        size: number of leading samples to use; None for all.
        in_memory: load the subset into memory on first use.
        require_groups: refuse a split without ``groups``.
    """

    def __init__(
        self, path: str, split: Split, size: Optional[int] = None, in_memory: bool = True, require_groups: bool = True
    ) -> None:
        self.path, self.split, self.in_memory = str(path), split, in_memory
        info = inspect_split(self.path, split, require_groups)
        if size is not None and not 0 < size <= info["samples"]:
            raise DataError(f"{self.path}: asked for {size} {split} samples, the file holds {info['samples']}")
        self.frames, self.shape, self.has_groups = info["frames"], info["shape"], info["has_groups"]
        self.size = info["samples"] if size is None else size
        self._file: h5py.File | None = None
        self._cache: tuple[Tensor, Tensor | None] | None = None

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # reopened lazily in each worker

    def _read(self, index: slice | list[int]) -> tuple[Tensor, Tensor | None]:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        group = self._file[self.split]
        features = np.asarray(group["features"][:, index], dtype=np.float32)  # (T, n, H, W, C)
        groups = np.asarray(group["groups"][:, index]) if self.has_groups else None  # (T, n, H, W[, 1])
        first = index.start if isinstance(index, slice) else index[0]
        _check_values(self.path, self.split, features, groups, first or 0)
        x = torch.from_numpy(features).permute(1, 0, 4, 2, 3).contiguous()  # (n, T, C, H, W)
        if groups is None:
            return x, None
        g = torch.from_numpy(groups.reshape(groups.shape[:4]).astype(np.int64)).transpose(0, 1).contiguous()
        return x, g  # g: (n, T, H, W)

    def _load(self) -> tuple[Tensor, Tensor | None]:
        """The whole subset, read and checked block by block into compact tensors (groups as uint8 while the labels
        fit), so memory peaks at the data's own size, not at several converted copies of it."""
        x = g = None
        for start in range(0, self.size, LOAD_BLOCK):
            stop = min(start + LOAD_BLOCK, self.size)
            bx, bg = self._read(slice(start, stop))
            if x is None:
                x = torch.empty((self.size, *bx.shape[1:]), dtype=bx.dtype)
                g = None if bg is None else torch.empty((self.size, *bg.shape[1:]), dtype=torch.uint8)
            x[start:stop] = bx
            if bg is not None:
                if g.dtype == torch.uint8 and int(bg.max()) > 255:
                    g = g.long()  # more than 255 labels: keep them whole
                g[start:stop] = bg
        return x, g

    def __getitems__(self, indices: list[int]) -> list[dict[str, Tensor]]:
        if self.in_memory:
            if self._cache is None:
                self._cache = self._load()
            x, g = self._cache
            idx = torch.as_tensor(indices)
            return [{"features": x[idx], **({"groups": g[idx].long()} if g is not None else {}), "index": idx}]
        order = np.argsort(indices)  # h5py reads increasing indices only
        x, g = self._read([int(i) for i in np.asarray(indices)[order]])
        inverse = torch.as_tensor(np.argsort(order))
        batch = {"features": x[inverse], "index": torch.as_tensor(indices)}
        if g is not None:
            batch["groups"] = g[inverse]
        return [batch]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index])[0].items()}


def _collate(items: list[dict[str, Tensor]]) -> dict[str, Any]:
    """Batches come whole from ``__getitems__``; single items are stacked.

    ``draw_index`` repeats the sample indices as host ints: evaluation keys each sample's random stream by its
    index, and reading them from the device copy would synchronise with the device once per batch.
    """
    if len(items) == 1 and items[0]["features"].dim() == 5:
        batch = dict(items[0])
    else:
        batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    batch["draw_index"] = batch["index"].tolist()
    return batch


class EpochShuffle(DistributedSampler):
    """The training order: a permutation drawn from (seed, epoch), this process's share of it, and a start.

    The order depends on nothing but the seed and the epoch, so a resumed run can continue an epoch where the
    interrupted one stopped: ``resume(epoch, start)`` skips the first ``start`` samples of that epoch, once.
    With one process it is simply a reproducible shuffle (``num_replicas=1, rank=0``).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, start: int) -> None:
        """Make the next pass over ``epoch`` begin at its ``start``-th sample."""
        self.epoch, self._resume = epoch, (epoch, start)

    def __iter__(self):
        indices = list(super().__iter__())
        resume, self._resume = self._resume, None
        start = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return iter(indices[start:])


class ResumableLoader(DataLoader):
    """A training DataLoader that Lightning saves into checkpoints and restores on resume.

    Its state is the shuffle's seed, the epoch to go on with and the samples of that epoch already trained on
    (from the trainer's progress, through ``progress``: batches done and batches per epoch). Lightning calls
    ``state_dict`` when it writes a checkpoint and ``load_state_dict`` before the resumed epoch starts, so the
    resumed run sees the same batches, in the same order, as an uninterrupted one.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, float]] = lambda: (0, 1), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochShuffle):  # replaced by Lightning, e.g. for overfit_batches
            return {}
        done, per_epoch = self.progress()
        if done >= per_epoch:  # the epoch is over: a resumed run starts the next one
            return {"seed": self.sampler.seed, "epoch": self.sampler.epoch + 1, "consumed": 0}
        return {"seed": self.sampler.seed, "epoch": self.sampler.epoch, "consumed": done * self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, EpochShuffle):
            return
        self.sampler.seed = int(state["seed"])
        self.sampler.resume(int(state["epoch"]), int(state["consumed"]))


class GroupingDataModule(pl.LightningDataModule):
    """Static (T = 1) or sequential grouping data from one file in the official HDF5 layout.

    Example: ``nem fit --config configs/shapes.yaml --data.path data/shapes.h5``.

    Args:
        path: HDF5 file in the official layout (the authors' original files work unchanged); null means
            ``data/<generate>.h5``, which lets a sweep vary ``generate`` alone.
        generate: name of a built-in dataset (see ``nem-data --help``) to generate at ``path`` when the
            file does not exist yet; null to require an existing file.
        generate_seed: seed of that generation (the same seed always writes the same file).
        batch_size: samples per batch.
        train_size: use the first N training samples; null for all.
        val_size: use the first N validation samples (the paper validated on the first 1000).
        test_size: use the first N test samples; null for all.
        test_split: the split ``nem test`` scores: ``test``, or ``training`` / ``validation`` to score those as a
            test (e.g. a trained model's score on its training set); that split's size option applies.
        num_workers: DataLoader worker processes.
        in_memory: read each used subset into memory once (fast); false reads batches from disk.
    """

    def __init__(
        self,
        path: Optional[str] = "data/shapes.h5",
        generate: Optional[str] = None,
        generate_seed: int = 0,
        batch_size: int = 64,
        train_size: Optional[int] = None,
        val_size: Optional[int] = 1000,
        test_size: Optional[int] = None,
        test_split: Split = "test",
        num_workers: int = 0,
        in_memory: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise DataError(f"data.batch_size must be at least 1, got {batch_size}")
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value is not None and value < 1:
                raise DataError(f"data.{name} must be a positive number of samples or null, got {value}")
        if path is None and generate is None:
            raise DataError("data.path is null and data.generate is not set: name a file or a dataset to generate")
        self.save_hyperparameters()
        self.path = str(path) if path is not None else os.path.join("data", f"{generate}.h5")
        self._datasets: dict[str, GroupingDataset] = {}

    def prepare_data(self) -> None:
        """Generate the dataset on first use (rank 0 only), atomically."""
        if os.path.exists(self.path):
            self._check_generation()
            return
        if self.hparams.generate is None:
            raise DataError(
                f"data.path {self.path!r} does not exist; point it at a file in the official layout "
                f"or set data.generate to a dataset name to create it"
            )
        from nem_lightning.generators import generate_dataset

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        generate_dataset(self.hparams.generate, self.path, seed=self.hparams.generate_seed)

    @property
    def num_labels(self) -> int | None:
        """Bound on the group labels (objects + 1) from a generated file's ``objects`` attribute; None if unknown.

        Scoring with a known bound makes no host synchronisation per batch; files written by other tools
        carry no such attribute and are scored with the bound read from each batch.
        """
        try:
            with h5py.File(self.path, "r") as f:
                objects = f.attrs.get("objects")
        except OSError:
            return None
        return None if objects is None else int(objects) + 1

    def _check_generation(self) -> None:
        """Refuse a file that an older generator wrote for ``data.generate``: its data differ from today's."""
        from nem_lightning.generators import GENERATOR_VERSION

        if self.hparams.generate is None or not os.path.isfile(self.path):
            return
        try:
            with h5py.File(self.path, "r") as f:
                name, version = f.attrs.get("name"), f.attrs.get("generator_version")
        except OSError:
            return  # not HDF5: reported by the dataset with the file's name
        if name == self.hparams.generate and version is not None and int(version) != GENERATOR_VERSION:
            raise DataError(
                f"{self.path} holds {name} from generator version {int(version)}, but this version generates "
                f"version {GENERATOR_VERSION} (different data); delete the file to regenerate it, or keep it by "
                f"setting data.generate to null"
            )

    def dataset(self, split: Split, require_groups: bool = True) -> GroupingDataset:
        """The (cached) dataset of one split."""
        if split not in self._datasets:
            size = {"training": self.hparams.train_size, "validation": self.hparams.val_size}.get(
                split, self.hparams.test_size
            )
            if split == "validation" and size is not None:
                size = min(size, inspect_split(self.path, split, require_groups)["samples"])
            self._datasets[split] = GroupingDataset(self.path, split, size, self.hparams.in_memory, require_groups)
        return self._datasets[split]

    def batch(self, split: Split, indices: list[int]) -> dict[str, Tensor]:
        """One batch of chosen samples of a split (``features``, ``groups`` if any, ``index``), e.g. for figures."""
        return _collate(self.dataset(split).__getitems__(list(indices)))

    def setup(self, stage: str) -> None:
        tested = self.hparams.test_split
        splits = {"fit": ["training", "validation"], "validate": ["validation"], "test": [tested]}.get(stage, [])
        for split in splits:
            self.dataset(split)

    def _loader(self, split: Split, require_groups: bool = True) -> DataLoader:
        dataset = self.dataset(split, require_groups)
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's default evaluation sampler pads ranks with duplicate samples, which would count
            # some images twice in the scores: give each rank a disjoint, unpadded share instead.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(dataset, sampler=sampler, **self._loader_options())

    def _loader_options(self) -> dict[str, Any]:
        return dict(
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=_collate,
            persistent_workers=self.hparams.num_workers > 0,
            # the loaders' own generator (worker seeds): iterating them leaves the global stream to training noise
            generator=torch.Generator().manual_seed(0),
        )

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled per epoch from the run's seed (``seed_everything``); resumable mid-epoch."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochShuffle(self.dataset("training"), world, rank, seed=torch.initial_seed() % 2**62)
        return ResumableLoader(
            self.dataset("training"), sampler=sampler, progress=self._progress, **self._loader_options()
        )

    def _progress(self) -> tuple[int, float]:
        """Training batches of the current epoch whose update is done, and the batches per epoch."""
        if self.trainer is None:
            return 0, float("inf")
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done, self.trainer.num_training_batches

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", require_groups=False)
