"""The static and flying shapes generators: overlaps, the shapes' patterns, motion, bouncing at the borders,
and the flying-shapes options."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import TINY, paste
from nem_lightning import generators
from nem_lightning.errors import DataError
from nem_lightning.generators import generate_dataset, shapes, sprites
from nem_lightning.generators.command import main


def test_static_groups_are_zero_exactly_where_shapes_overlap() -> None:
    """A pixel covered by two or more shapes has group 0; one covered by one shape has that shape's id."""
    x, g, pos, kinds = shapes.sample_shapes(np.random.default_rng(3), 300, objects=3, frames=1)
    sprites_ = shapes.object_shapes(3)
    assert (kinds == [0, 1, 2]).all()  # static images: one square and two triangles, as the original
    overlaps = 0
    for i in range(300):
        masks = np.stack([paste(s, *pos[0, i, k], 28) for k, s in enumerate(sprites_)])  # (3, 28, 28)
        cover = masks.sum(axis=0)
        expected = np.where(cover == 1, np.argmax(masks, axis=0) + 1, 0)
        np.testing.assert_array_equal(g[0, i, :, :, 0], expected)
        np.testing.assert_array_equal(x[0, i, :, :, 0], cover > 0)
        overlaps += int((cover > 1).sum())
    assert overlaps > 0  # the check above did meet overlapping pixels


def test_shape_patterns_match_the_reference_description() -> None:
    """The square is 7x7 with a 2-pixel border; the triangles are 7 rows tall and mirror each other."""
    assert shapes.SQUARE.shape == (7, 7) and shapes.SQUARE.sum() == 49 - 9
    assert not shapes.SQUARE[2:5, 2:5].any()
    assert shapes.TRIANGLE.shape == (7, 12)
    np.testing.assert_array_equal(shapes.TRIANGLE_FLIPPED, shapes.TRIANGLE[::-1])
    np.testing.assert_array_equal(shapes.TRIANGLE, shapes.TRIANGLE[:, ::-1])  # symmetric


def test_flying_shape_stays_whole_inside_the_frame_and_moves() -> None:
    """A lone flying square keeps all its pixels in every frame, sits at its position and changes frames."""
    x, g, pos, _ = shapes.sample_shapes(np.random.default_rng(0), 50, objects=1, frames=30, random_shapes=False)
    assert np.all(x.sum(axis=(2, 3, 4)) == shapes.SQUARE.sum())  # (T, N): never clipped or wrapped
    for t, i in [(0, 0), (7, 3), (29, 49)]:
        np.testing.assert_array_equal(x[t, i, :, :, 0], paste(shapes.SQUARE, *pos[t, i, 0], 28))
    moved = np.any(x[1:] != x[:-1], axis=(2, 3, 4))  # (T-1, N)
    assert moved.mean() > 0.85 and moved.any(axis=0).mean() > 0.85  # 1/9 of the objects stand still


def test_bouncing_positions_reflect_at_both_borders() -> None:
    """Positions fold back at 0 and at the limit with the velocity's sign reversed."""
    up = sprites.bouncing_positions(np.array(0), np.array(3), 14, 10)
    np.testing.assert_array_equal(up, [0, 3, 6, 9, 8, 5, 2, 1, 4, 7, 10, 7, 4, 1])
    down = sprites.bouncing_positions(np.array(2), np.array(-2), 5, 16)
    np.testing.assert_array_equal(down, [2, 0, 2, 4, 6])
    with pytest.raises(ValueError):
        sprites.bouncing_positions(np.array(0), np.array(1), 3, 0)


def test_generated_flying_shapes_bounce_only_at_borders() -> None:
    """In generated data each coordinate stays in range, and its step reverses only next to a border."""
    _, _, pos, kinds = shapes.sample_shapes(np.random.default_rng(1), 200, objects=5, frames=21, max_speed=3)
    sizes = np.array([s.shape for s in shapes.SHAPES])
    limits = 28 - sizes[kinds]  # (N, n, 2): each object's own shape
    assert pos.min() >= 0 and np.all(pos <= limits)
    step = np.diff(pos, axis=0)  # (T-1, N, n, 2)
    assert np.abs(step).max() == 3
    reversed_ = step[1:] * step[:-1] < 0  # velocity sign flipped between consecutive steps
    assert reversed_.sum() > 0
    at = pos[1:-1][reversed_]  # positions where a reversal took effect
    near = np.broadcast_to(limits, pos.shape)[1:-1][reversed_]
    assert np.all((at <= 3) | (at >= near - 3))


def test_original_motion_and_shapes_drawn_with_replacement() -> None:
    """max_speed=1 moves -1, 0 or +1 pixel per axis, some objects stand still, and shapes repeat within a scene."""
    x, g, pos, kinds = shapes.sample_shapes(np.random.default_rng(2), 400, objects=3, frames=6, max_speed=1)
    step = np.diff(pos, axis=0)  # (T-1, N, n, 2)
    assert set(np.unique(step)) == {-1, 0, 1}
    still = np.all(step == 0, axis=(0, 3))  # (N, n)
    assert 0.05 < still.mean() < 0.2  # 1 velocity in 9
    assert set(np.unique(kinds)) == {0, 1, 2}
    repeated = np.array([len(set(row)) < 3 for row in kinds])
    assert 0.6 < repeated.mean() < 0.9  # 1 - 3!/27 = 78% of scenes repeat a shape
    for i in range(5):  # each object is drawn with its own shape
        for k in range(3):
            sprite = shapes.SHAPES[kinds[i, k]]
            np.testing.assert_array_equal(
                x[0, i, :, :, 0] * paste(sprite, *pos[0, i, k], 28), paste(sprite, *pos[0, i, k], 28)
            )
    np.testing.assert_array_equal(sprites.velocity_table(1).tolist(), [[a, b] for a in (-1, 0, 1) for b in (-1, 0, 1)])
    with pytest.raises(ValueError, match="max_speed"):
        sprites.velocity_table(-1)


def test_flying_shapes_options_reach_the_file(tmp_path: Path) -> None:
    """`nem-data flying-shapes --max-speed 1 --distinct-shapes` writes that motion and records it in the file."""
    out = tmp_path / "fs.h5"
    main(
        [
            "flying-shapes",
            "--train",
            "20",
            "--val",
            "4",
            "--test",
            "4",
            "--frames",
            "4",
            "--max-speed",
            "1",
            "--distinct-shapes",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    with h5py.File(out, "r") as f:
        assert f.attrs["max_speed"] == 1 and f.attrs["shapes"] == "distinct" and f.attrs["generator_version"] == 2
    default = generate_dataset("flying_shapes_3", tmp_path / "d.h5", sizes=TINY, frames=4, progress=False)
    with h5py.File(default, "r") as f:
        assert f.attrs["max_speed"] == generators.DEFAULT_MAX_SPEED and f.attrs["shapes"] == "with_replacement"
    with pytest.raises(DataError, match="max_speed must be an integer from 0 to 10"):
        generate_dataset("flying_shapes_3", tmp_path / "e.h5", sizes=TINY, frames=4, max_speed=11, progress=False)
