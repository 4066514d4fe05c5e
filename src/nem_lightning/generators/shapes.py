"""Static and flying shapes: 28x28 binary images of squares and triangles.

The pixel patterns follow the original shapes data (a 7x7 square with a 2-pixel border, a hollow
7-row triangle 12 pixels wide, and that triangle flipped upside down), so that models trained on
our files and on the original ones see the same objects.
"""

from __future__ import annotations

import numpy as np

from nem_lightning.generators.sprites import render_binary, sample_motion, velocity_table

IMAGE_SIZE = 28


def _pattern(*rows: str) -> np.ndarray:
    """Boolean mask from rows of '#' (on) and '.' (off)."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


# (7, 7): hollow square, 2-pixel border.
SQUARE = _pattern(
    "#######",
    "#######",
    "##...##",
    "##...##",
    "##...##",
    "#######",
    "#######",
)
# (7, 12): hollow triangle, apex up, 2-pixel-thick base.
TRIANGLE = _pattern(
    ".....##.....",
    "....####....",
    "...######...",
    "..###..###..",
    ".###....###.",
    "############",
    "############",
)
# (7, 12): the same triangle, apex down.
TRIANGLE_FLIPPED = TRIANGLE[::-1].copy()

SHAPES: tuple[np.ndarray, ...] = (SQUARE, TRIANGLE, TRIANGLE_FLIPPED)


def object_shapes(objects: int) -> list[np.ndarray]:
    """Sprite of each object when shapes are cycled: object k (0-based) is SHAPES[k % 3].

    Cycling gives every image with 3 objects exactly one square and two triangles, as in the static
    data, and keeps object k's shape fixed across the file.
    """
    return [SHAPES[k % len(SHAPES)] for k in range(objects)]


def sample_shapes(
    rng: np.random.Generator,
    count: int,
    objects: int = 3,
    frames: int = 1,
    max_speed: int = 1,
    random_shapes: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw `count` shape images (frames == 1) or sequences of bouncing shapes (frames > 1).

    Start positions are uniform over all placements that keep the shape fully inside the image;
    velocities are uniform over the integer (dy, dx) in [-max_speed, max_speed]^2, standing still
    included, constant except for reflection at the borders.

    The defaults follow the original data: static images hold one square and two triangles (shapes
    cycled); flying sequences draw each object's shape uniformly with replacement (the original's
    illustration shows two squares and three upright triangles in one scene) and move at most one
    pixel per axis per frame.

    Args:
        rng: random generator; the output is a pure function of its state.
        count: number of samples N.
        objects: number of objects n per image.
        frames: number of frames T (1 for static data).
        max_speed: largest speed per axis, in pixels per frame (flying data only).
        random_shapes: draw shapes with replacement; None for the default above (static: no, flying: yes).

    Returns:
        features: (T, N, 28, 28, 1) float32 in {0, 1}.
        groups: (T, N, 28, 28, 1) float32 in {0..n}, 0 for background and overlaps.
        positions: (T, N, n, 2) int64 top-left (row, col) of each object.
        kinds: (N, n) int64 index into SHAPES of each object.
    """
    if random_shapes is None:
        random_shapes = frames > 1
    if random_shapes:
        kinds = rng.integers(0, len(SHAPES), size=(count, objects))  # (N, n)
    else:
        kinds = np.broadcast_to(np.arange(objects) % len(SHAPES), (count, objects))
    sizes = np.array([s.shape for s in SHAPES])  # (3, 2)
    limits = IMAGE_SIZE - sizes[kinds]  # (N, n, 2)
    positions = sample_motion(rng, count, limits, frames, velocity_table(max_speed))  # (T, N, n, 2)
    kinds_per_frame = np.broadcast_to(kinds, (frames, count, objects)).reshape(frames * count, objects)
    features, groups = render_binary(
        list(SHAPES), positions.reshape(frames * count, objects, 2), IMAGE_SIZE, kinds_per_frame
    )
    shape = (frames, count, IMAGE_SIZE, IMAGE_SIZE, 1)
    return features.reshape(shape), groups.reshape(shape), positions, np.array(kinds, dtype=np.int64)
