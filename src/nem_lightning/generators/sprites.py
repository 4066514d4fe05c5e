"""Moving sprites: bouncing trajectories and pixelwise compositing with ground-truth groups.

Shared by the shapes and flying-MNIST generators. Everything is vectorised over images: the only
Python loops run over the few objects of an image, never over images or pixels.

Group convention of the official files: 0 = background and pixels where two or more objects
overlap (both are excluded from scoring), k = 1..n = object k.
"""

from __future__ import annotations

import numpy as np

from nem_lightning.generators import interrupts

# Every integer velocity (dy, dx) with components in [-3, 3] except standing still: (48, 2). Flying
# MNIST draws from these; flying shapes use `velocity_table`.
VELOCITIES = np.array([(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4) if (dy, dx) != (0, 0)], dtype=np.int64)


def velocity_table(max_speed: int) -> np.ndarray:
    """Every integer velocity (dy, dx) with components in [-max_speed, max_speed], standing still included.

    ``max_speed=1`` gives the 9 velocities of the original flying-shapes data, whose illustration shows
    every object moving -1, 0 or +1 pixel per axis per frame (one of them not at all).

    Returns:
        ((2 * max_speed + 1) ** 2, 2) int64.
    """
    if isinstance(max_speed, bool) or not isinstance(max_speed, (int, np.integer)) or max_speed < 0:
        raise ValueError(f"max_speed must be a non-negative integer, got {max_speed!r}")
    speeds = range(-int(max_speed), int(max_speed) + 1)
    return np.array([(dy, dx) for dy in speeds for dx in speeds], dtype=np.int64)


def bouncing_positions(start: np.ndarray, velocity: np.ndarray, frames: int, limit: np.ndarray | int) -> np.ndarray:
    """Integer positions of points moving at constant velocity inside [0, limit], reflecting at both ends.

    Reflection is elastic and exact: a point at 15 moving +3 with limit 16 lands on 14, because
    the fold of the unbounded path p0 + v*t onto [0, limit] is a triangle wave of period 2*limit.

    Args:
        start: (...) integer start positions, each in [0, limit].
        velocity: (...) integer velocities, same shape as `start` (pixels per frame).
        frames: number of frames T.
        limit: largest allowed position, scalar or broadcastable to `start`; at least 1.

    Returns:
        (T, ...) int64 positions; frame 0 equals `start`.
    """
    limit = np.asarray(limit, dtype=np.int64)
    if np.any(limit < 1):
        raise ValueError("bouncing_positions needs limit >= 1 (the sprite must be smaller than the canvas)")
    t = np.arange(frames, dtype=np.int64).reshape((frames,) + (1,) * np.ndim(start))
    period = 2 * limit
    unfolded = np.mod(np.asarray(start, np.int64) + np.asarray(velocity, np.int64) * t, period)  # (T, ...)
    return np.where(unfolded <= limit, unfolded, period - unfolded)


def sample_motion(
    rng: np.random.Generator, count: int, limits: np.ndarray, frames: int, velocities: np.ndarray = VELOCITIES
) -> np.ndarray:
    """Uniform start positions and velocities from ``velocities``, then bouncing trajectories.

    With frames == 1 no velocities are drawn (static images), so static data spends the random
    stream on positions only.

    Args:
        rng: random generator, consumed in a fixed order (rows, columns, velocities).
        count: number of samples N.
        limits: (n, 2) or (N, n, 2) largest top-left (row, col) per object, i.e. canvas size minus
            sprite size; (N, n, 2) when the sprites differ between samples.
        frames: number of frames T.
        velocities: (V, 2) integer (dy, dx) to draw from uniformly.

    Returns:
        (T, N, n, 2) int64 top-left (row, col) of each object in each frame.
    """
    n = limits.shape[-2]
    rows = rng.integers(0, limits[..., 0] + 1, size=(count, n))  # (N, n), inclusive of the limit
    cols = rng.integers(0, limits[..., 1] + 1, size=(count, n))  # (N, n)
    if frames == 1:
        return np.stack([rows, cols], axis=-1)[None]  # (1, N, n, 2)
    velocity = velocities[rng.integers(0, len(velocities), size=(count, n))]  # (N, n, 2)
    return np.stack(
        [
            bouncing_positions(rows, velocity[..., 0], frames, limits[..., 0]),
            bouncing_positions(cols, velocity[..., 1], frames, limits[..., 1]),
        ],
        axis=-1,
    )  # (T, N, n, 2)


def _corner_index(positions: np.ndarray, size: int) -> np.ndarray:
    """Flat index of each object's top-left pixel in a raveled (M, size, size) canvas stack.

    Args:
        positions: (M, n, 2) integer top-left (row, col).
        size: canvas side length.

    Returns:
        (M, n) int64 flat indices.
    """
    image = np.arange(positions.shape[0], dtype=np.int64)[:, None] * (size * size)  # (M, 1)
    return image + positions[..., 0] * size + positions[..., 1]


def render_binary(
    sprites: list[np.ndarray], positions: np.ndarray, size: int, kinds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Paste binary sprites (union) and label each pixel with the one object covering it.

    Args:
        sprites: boolean masks, sprite s of shape (h_s, w_s).
        positions: (M, n, 2) integer top-left (row, col); each sprite must lie fully inside the canvas
            (flat indexing would otherwise wrap into the next row silently).
        size: canvas side length S.
        kinds: (M, n) index into ``sprites`` of each object in each image; None means object k is
            ``sprites[k]`` in every image.

    Returns:
        features: (M, S, S) float32 in {0, 1}.
        groups: (M, S, S) float32 in {0..n}; 0 where no object or two or more objects cover the pixel.
    """
    m, n = positions.shape[:2]
    if kinds is None:
        kinds = np.broadcast_to(np.arange(n), (m, n))
    cover = np.zeros(m * size * size, dtype=np.uint8)  # number of objects on each pixel
    label = np.zeros(m * size * size, dtype=np.uint8)  # sum of their ids: the id itself where cover == 1
    corner = _corner_index(positions, size)  # (M, n)
    for k in range(n):
        for s, sprite in enumerate(sprites):
            interrupts.check()  # each pass paints a whole block's frames: a signal must not wait for all
            images = np.flatnonzero(kinds[:, k] == s)
            if images.size == 0:
                continue
            dy, dx = np.nonzero(sprite)
            flat = corner[images, k, None] + (dy * size + dx)  # (M_s, P_s)
            # One sprite never hits the same pixel twice, so buffered fancy-index += is exact here.
            cover[flat] += 1
            label[flat] += k + 1
    features = (cover > 0).astype(np.float32).reshape(m, size, size)
    groups = np.multiply(label, cover == 1, dtype=np.float32).reshape(m, size, size)
    return features, groups


def render_grey(
    sprites: np.ndarray, positions: np.ndarray, size: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Composite grey sprites by pixelwise max; a pixel's group is the one object bright on it.

    Args:
        sprites: (M, n, h, w) float32 sprites in [0, 1], one per object per image.
        positions: (M, n, 2) integer top-left (row, col), sprites fully inside the canvas.
        size: canvas side length S.
        threshold: a sprite pixel is "bright" (owned by its object) when its value is > threshold.

    Returns:
        features: (M, S, S) float32 in [0, 1], the max over objects.
        groups: (M, S, S) float32 in {0..n}; k where exactly object k is bright, 0 where none or several are.
    """
    m, n, h, w = sprites.shape
    canvas = np.zeros(m * size * size, dtype=np.float32)
    bright = np.zeros(m * size * size, dtype=np.uint8)  # number of objects bright on each pixel
    label = np.zeros(m * size * size, dtype=np.uint8)  # sum of their ids
    corner = _corner_index(positions, size)  # (M, n)
    offsets = (np.arange(h)[:, None] * size + np.arange(w)).ravel()  # (h*w,)
    for k in range(n):
        interrupts.check()  # each pass paints a whole block's frames: a signal must not wait for all
        flat = corner[:, k, None] + offsets  # (M, h*w)
        values = sprites[:, k].reshape(m, h * w)  # (M, h*w)
        canvas[flat] = np.maximum(canvas[flat], values)
        on = values > threshold
        bright[flat] += on
        label[flat] += on * np.uint8(k + 1)
    features = canvas.reshape(m, size, size)
    groups = np.multiply(label, bright == 1, dtype=np.float32).reshape(m, size, size)
    return features, groups
