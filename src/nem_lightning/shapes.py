"""Static and flying shapes: 28x28 binary images of a square and two triangles.

The pixel patterns follow the original shapes data (a 7x7 square with a 2-pixel border, a hollow
7-row triangle 12 pixels wide, and that triangle flipped upside down), so that models trained on
our files and on the original ones see the same objects.
"""

from __future__ import annotations

import numpy as np

from nem_lightning.sprites import render_binary, sample_motion

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
    """Sprite of each object: object k (0-based) is SHAPES[k % 3].

    Cycling (rather than drawing shapes at random) gives every image with 3 objects exactly one
    square and two triangles, as in the static data, and keeps object k's shape fixed across the file.
    """
    return [SHAPES[k % len(SHAPES)] for k in range(objects)]


def sample_shapes(
    rng: np.random.Generator, count: int, objects: int = 3, frames: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw `count` shape images (frames == 1) or sequences of bouncing shapes (frames > 1).

    Start positions are uniform over all placements that keep the shape fully inside the image;
    velocities are uniform over the 48 nonzero integer (dy, dx) in [-3, 3]^2, constant except for
    reflection at the borders.

    Args:
        rng: random generator; the output is a pure function of its state.
        count: number of samples N.
        objects: number of objects n per image.
        frames: number of frames T (1 for static data).

    Returns:
        features: (T, N, 28, 28, 1) float32 in {0, 1}.
        groups: (T, N, 28, 28, 1) float32 in {0..n}, 0 for background and overlaps.
        positions: (T, N, n, 2) int64 top-left (row, col) of each object.
    """
    sprites = object_shapes(objects)
    limits = np.array([[IMAGE_SIZE - s.shape[0], IMAGE_SIZE - s.shape[1]] for s in sprites])  # (n, 2)
    positions = sample_motion(rng, count, limits, frames)  # (T, N, n, 2)
    features, groups = render_binary(sprites, positions.reshape(frames * count, objects, 2), IMAGE_SIZE)
    shape = (frames, count, IMAGE_SIZE, IMAGE_SIZE, 1)
    return features.reshape(shape), groups.reshape(shape), positions
