"""Overview figures, GIFs and AMI curves render to RGB arrays and files."""

import os

import numpy as np
import pytest
from PIL import Image

from nem_lightning import figures
from nem_lightning.figures import (
    PALETTE,
    ami_per_step_figure,
    colorize_gamma,
    grouping_figure,
    save_gif,
    save_png,
    select_steps,
    sequence_frames,
    sequence_gif,
)

T, K, H, W = 4, 3, 8, 8


def sample(seed=0, steps=T):
    """Random inputs, corrupted frames, normalised gammas and predictions for one sample."""
    rng = np.random.default_rng(seed)
    gammas = rng.random((steps, K, H, W))
    gammas /= gammas.sum(1, keepdims=True)
    inputs = (rng.random((1, H, W)) > 0.5).astype(np.float32)
    return inputs, rng.random((steps, H, W)), gammas, rng.random((steps, K, H, W))


def one_hot(labels, k=K):
    """(T, H, W) labels to one-hot gammas (T, K, H, W)."""
    return np.moveaxis(np.eye(k)[labels], -1, 1)


def count_colour(image, colour, tol=1):
    """Pixels of an RGB image within ``tol`` of ``colour`` in every channel."""
    return int((np.abs(image.astype(int) - np.asarray(colour, dtype=int)) <= tol).all(-1).sum())


def test_grouping_figure_is_rgb_uint8_and_groups_add_a_row():
    """The figure is an (H, W, 3) uint8 array; passing true groups adds a row, so it grows taller."""
    inputs, corrupted, gammas, preds = sample()
    plain = grouping_figure(inputs, corrupted, gammas, preds)
    groups = np.random.default_rng(1).integers(0, 3, (1, H, W))
    with_groups = grouping_figure(inputs, corrupted, gammas, preds, groups=groups)
    assert plain.dtype == np.uint8 and plain.ndim == 3 and plain.shape[2] == 3
    assert with_groups.shape[0] > plain.shape[0] and with_groups.shape[1] == plain.shape[1]


def test_colorize_gamma_one_hot_gives_palette_colours():
    """Where gamma is one-hot, the colour-coded pixel is exactly the component's palette colour."""
    labels = np.random.default_rng(2).integers(0, K, (T, H, W))
    rgb = colorize_gamma(one_hot(labels))
    assert rgb.shape == (T, H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, PALETTE[labels])


def test_colorize_gamma_brightness_is_max_gamma():
    """A pixel with max gamma 0.5 is the palette colour at half brightness."""
    gamma = np.zeros((K, 1, 1))
    gamma[:, 0, 0] = [0.2, 0.5, 0.3]
    np.testing.assert_array_equal(colorize_gamma(gamma)[0, 0], np.rint(PALETTE[1] * 0.5).astype(np.uint8))


def test_gamma_row_of_the_figure_shows_palette_colours():
    """With one-hot gamma (left half component 2, right half 0) the rendered figure holds large areas of
    exactly those palette colours and none of an unused component's colour."""
    inputs, corrupted, _, preds = sample()
    labels = np.zeros((T, H, W), dtype=int)
    labels[:, :, : W // 2] = 2
    image = grouping_figure(inputs, corrupted, one_hot(labels), preds)
    half_tile = 64 * 32  # 8x8 images are drawn 8 times larger, pixel for pixel
    assert count_colour(image, PALETTE[2], tol=0) >= T * half_tile * 0.95
    assert count_colour(image, PALETTE[0], tol=0) >= T * half_tile * 0.95
    assert count_colour(image, PALETTE[4]) == 0


@pytest.mark.parametrize("title, ami", [("sample 3", None), (None, 0.812), ("sample 3", 0.812)])
def test_title_with_and_without_ami(title, ami):
    """A title, an AMI or both add a heading: the figure grows taller than one without and the text differs."""
    inputs, corrupted, gammas, preds = sample()
    bare = grouping_figure(inputs, corrupted, gammas, preds)
    titled = grouping_figure(inputs, corrupted, gammas, preds, ami=ami, title=title)
    assert titled.shape[0] > bare.shape[0]
    if title and ami is not None:
        title_only = grouping_figure(inputs, corrupted, gammas, preds, title=title)
        assert titled.shape == title_only.shape and not np.array_equal(titled, title_only)


def test_long_runs_show_at_most_max_columns_including_the_last_step():
    """25 steps show 10 evenly spread columns from the first to the last; the figure is as wide as for 10."""
    shown = select_steps(25, 10)
    assert len(shown) == 10 and shown[0] == 0 and shown[-1] == 24 and np.all(np.diff(shown) > 0)
    np.testing.assert_array_equal(select_steps(5, 10), np.arange(5))
    wide = grouping_figure(*sample(steps=25))
    ten = grouping_figure(*sample(steps=10))
    assert wide.shape == ten.shape


def test_shape_mismatch_is_refused():
    """gammas and preds of different shapes, or inputs with the wrong number of steps, raise ValueError."""
    inputs, corrupted, gammas, preds = sample()
    with pytest.raises(ValueError, match="gammas and preds"):
        grouping_figure(inputs, corrupted, gammas, preds[:, :2])
    with pytest.raises(ValueError, match="inputs"):
        grouping_figure(np.zeros((2, H, W)), corrupted, gammas, preds)


def test_save_png_round_trips_and_leaves_no_temporary_file(tmp_path):
    """The PNG reads back pixel-exact, parent folders are created and only the PNG is left in the folder."""
    image = grouping_figure(*sample())
    path = save_png(image, tmp_path / "figs" / "sample.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    assert os.listdir(tmp_path / "figs") == ["sample.png"]


def test_written_files_get_ordinary_permissions(tmp_path):
    """The atomic write keeps the umask's permissions (a plain temporary file would be private, 0600)."""
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    path = save_png(np.zeros((2, 2, 3), dtype=np.uint8), tmp_path / "a.png")
    assert os.stat(path).st_mode & 0o777 == os.stat(reference).st_mode & 0o777


def test_sequence_gif_has_one_frame_per_step(tmp_path):
    """The GIF holds T frames of input | gamma | reconstruction, each ``scale`` times the panel size."""
    inputs, _, gammas, preds = sample(steps=5)
    frames = sequence_frames(inputs, gammas, preds, scale=3, gap=2)
    assert frames.shape == (5, 3 * H, 3 * (3 * W + 4), 3) and frames.dtype == np.uint8
    path = sequence_gif(inputs, gammas, preds, tmp_path / "seq.gif", fps=5, scale=3)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (frames.shape[2], frames.shape[1])
        assert gif.info["duration"] == 200
    assert os.listdir(tmp_path) == ["seq.gif"]


def test_save_gif_accepts_a_list_of_frames(tmp_path):
    """A list of (H, W, 3) arrays is written as a GIF with as many frames."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (6, 7, 3), dtype=np.uint8) for _ in range(3)]
    with Image.open(save_gif(frames, tmp_path / "list.gif", fps=2)) as gif:
        assert gif.n_frames == 3 and gif.size == (7, 6)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """If writing fails midway, the existing file is untouched and no temporary file remains."""
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        figures._atomic_write(target, fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]


def test_ami_per_step_figure_draws_the_curve():
    """The AMI curve renders to an RGB image containing the line's colour (matplotlib's first colour)."""
    image = ami_per_step_figure([0.1, 0.4, 0.7, 0.8, 0.85], title="test AMI per step")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert count_colour(image, (0x1F, 0x77, 0xB4), tol=2) > 50


def test_ami_per_step_figure_draws_labelled_curves_beside_a_reference():
    """Two labelled curves take matplotlib's first two colours; the reference adds its black square markers."""
    curves = {"ours": [0.1, 0.4, 0.7, 0.8, 0.85], "longer run": [0.1, 0.5, 0.75, 0.85, 0.9, 0.9]}
    plain = ami_per_step_figure(curves, title="per step")
    beside = ami_per_step_figure(
        curves, title="per step", reference={2: 0.2, 4: 0.3, 6: 0.95}, reference_label="poster"
    )
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert count_colour(plain, colour, tol=2) > 50 and count_colour(beside, colour, tol=2) > 50
    assert count_colour(beside, (0, 0, 0), tol=10) - count_colour(plain, (0, 0, 0), tol=10) > 120
