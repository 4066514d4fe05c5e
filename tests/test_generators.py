"""Tests of the dataset generators and the `nem-data` command, at tiny sizes."""

from __future__ import annotations

import ast
import gzip
import hashlib
import signal
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from nem_lightning import generators
from nem_lightning.errors import DataError
from nem_lightning.generators import DATASET_NAMES, command, flying_mnist, generate_dataset, shapes, sprites
from nem_lightning.generators.command import main

TINY = (20, 10, 10)


def _read(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """All arrays of a file, by split and key."""
    with h5py.File(path, "r") as f:
        return {split: {key: f[split][key][()] for key in f[split]} for split in generators.SPLITS}


def _paste(sprite: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """A (size, size) canvas with `sprite` at (row, col): the slow, obvious reference."""
    canvas = np.zeros((size, size), dtype=sprite.dtype)
    canvas[row : row + sprite.shape[0], col : col + sprite.shape[1]] = sprite
    return canvas


def _idx_bytes(images: np.ndarray, magic: int = 0x803) -> bytes:
    """Encode uint8 images (N, 28, 28) as an idx3-ubyte file."""
    return struct.pack(">IIII", magic, len(images), 28, 28) + images.astype(np.uint8).tobytes()


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_dataset_has_the_official_layout(name: str, tmp_path: Path) -> None:
    """Each name writes training/validation/test with float32 features and groups shaped (T, N, H, W, 1)."""
    path = generate_dataset(name, tmp_path / f"{name}.h5", sizes=TINY, frames=4, progress=False)
    static = name == "shapes"
    t, size = (1 if static else 4), (24 if "mnist" in name else 28)
    with h5py.File(path, "r") as f:
        assert f.attrs["name"] == name and f.attrs["generator_version"] == generators.GENERATOR_VERSION
        assert list(f.attrs["sizes"]) == list(TINY) and f.attrs["frames"] == t
        for split, n in zip(generators.SPLITS, TINY):
            for key in ("features", "groups"):
                assert f[split][key].dtype == np.float32
                assert f[split][key].shape == (t, n, size, size, 1)
    data = _read(path)
    objects = int(name.split("_")[2]) if not static else 3
    for split in data.values():
        x, g = split["features"], split["groups"]
        assert 0 <= x.min() and x.max() <= 1 and x.max() > 0
        assert set(np.unique(g)) <= set(range(objects + 1)) and g.max() == objects
        if "mnist" not in name:
            assert set(np.unique(x)) == {0.0, 1.0}
        assert np.all(x[g > 0] > 0)  # a labelled pixel is never background


def test_static_groups_are_zero_exactly_where_shapes_overlap() -> None:
    """A pixel covered by two or more shapes has group 0; one covered by one shape has that shape's id."""
    x, g, pos, kinds = shapes.sample_shapes(np.random.default_rng(3), 300, objects=3, frames=1)
    sprites_ = shapes.object_shapes(3)
    assert (kinds == [0, 1, 2]).all()  # static images: one square and two triangles, as the original
    overlaps = 0
    for i in range(300):
        masks = np.stack([_paste(s, *pos[0, i, k], 28) for k, s in enumerate(sprites_)])  # (3, 28, 28)
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


def test_same_seed_gives_identical_arrays_and_other_seeds_differ(tmp_path: Path) -> None:
    """Generation is a pure function of the seed: equal seeds match bit for bit, different seeds do not."""
    for name in ("shapes", "flying_shapes_3", "flying_mnist_2"):
        a = _read(generate_dataset(name, tmp_path / "a.h5", seed=7, sizes=TINY, frames=5, progress=False))
        b = _read(generate_dataset(name, tmp_path / "b.h5", seed=7, sizes=TINY, frames=5, progress=True))
        c = _read(generate_dataset(name, tmp_path / "c.h5", seed=8, sizes=TINY, frames=5, progress=False))
        for split in generators.SPLITS:
            for key in a[split]:
                assert a[split][key].tobytes() == b[split][key].tobytes()
            assert not np.array_equal(a[split]["features"], c[split]["features"])
        assert not np.array_equal(a["training"]["features"][:, :10], a["validation"]["features"])


# Files of generator version 2 with seed 11: sha256 over every array of every split (name, dtype, shape, bytes).
# A change here changes the data: bump GENERATOR_VERSION and update the hashes.
REFERENCE_FILES = {
    "shapes": ({"sizes": (503, 4, 3)}, "627f0539ec854da78830c56ea1cdf1565f922d034f1953cfb244568a4f119478"),
    "flying_shapes_3": (
        {"sizes": (20, 10, 10), "frames": 5},
        "1c8b2562867ed5e2d9a717c086f76e68cedc3865b3ebcc4a2038561cad6cb063",
    ),
    "flying_shapes_4": (
        {"sizes": (12, 5, 5), "frames": 3, "max_speed": 1, "distinct_shapes": True},
        "ec3bfbbf84c9f06e085afd9f61adb3d7e556382e41b79201842dacdce500e069",
    ),
    "flying_mnist_2": (
        {"sizes": (20, 10, 10), "frames": 5},
        "dc3f58ff074219970221d2bb1ff2560933f660b784bd1e4713d298dee75b9454",
    ),
    "flying_mnist_2_medium20": (
        {"sizes": (12, 5, 5), "frames": 3},
        "0fad0277a60a63cb5ce0280897dd305ff6b15937af0f2470baff8a61557b86b0",
    ),
}


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_generated_arrays_match_the_reference_hashes(name: str, tmp_path: Path) -> None:
    """Same settings, same arrays as generator version 2 has always written, bit for bit."""
    options, expected = REFERENCE_FILES[name]
    path = generate_dataset(name, tmp_path / "r.h5", seed=11, progress=False, **options)
    digest = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for split in generators.SPLITS:
            for key in sorted(f[split]):
                array = f[split][key][()]
                digest.update(f"{split}/{key}/{array.dtype}/{array.shape}".encode())
                digest.update(array.tobytes())
    assert digest.hexdigest() == expected


def test_generator_modules_import_without_cycles() -> None:
    """The modules of the generators package import each other along a tree, never in a cycle."""
    package = Path(generators.__file__).parent
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    imports: dict[str, set[str]] = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "nem_lightning.generators":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nem_lightning.generators."):
                found.add(node.module.split(".")[2])
        imports[name] = found & modules

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        for other in imports[name]:
            visit(other, (*path, name))

    for name in modules:
        visit(name, ())


def test_splits_longer_than_one_block_are_filled_completely(tmp_path: Path) -> None:
    """Sizes that span several write blocks leave no empty sample behind."""
    path = generate_dataset("shapes", tmp_path / "s.h5", sizes=(generators.BLOCK + 7, 1, 1), progress=False)
    x = _read(path)["training"]["features"]  # (1, BLOCK + 7, 28, 28, 1)
    assert np.all(x.sum(axis=(0, 2, 3, 4)) >= shapes.SQUARE.sum())


def test_flying_shape_stays_whole_inside_the_frame_and_moves() -> None:
    """A lone flying square keeps all its pixels in every frame, sits at its position and changes frames."""
    x, g, pos, _ = shapes.sample_shapes(np.random.default_rng(0), 50, objects=1, frames=30, random_shapes=False)
    assert np.all(x.sum(axis=(2, 3, 4)) == shapes.SQUARE.sum())  # (T, N): never clipped or wrapped
    for t, i in [(0, 0), (7, 3), (29, 49)]:
        np.testing.assert_array_equal(x[t, i, :, :, 0], _paste(shapes.SQUARE, *pos[t, i, 0], 28))
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
                x[0, i, :, :, 0] * _paste(sprite, *pos[0, i, k], 28), _paste(sprite, *pos[0, i, k], 28)
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


def test_mnist_pools_are_disjoint_and_splits_use_their_own(tmp_path: Path) -> None:
    """Training, validation and test digits come from disjoint pools of source images."""
    train, val, test = flying_mnist.digit_pools(5000)
    assert (len(train), len(val), len(test)) == (4000, 500, 500)
    assert len(np.unique(np.concatenate([train, val, test]))) == 5000
    data = _read(generate_dataset("flying_mnist_3", tmp_path / "m.h5", sizes=(60, 30, 30), frames=3, progress=False))
    used = {split: set(data[split]["digit_ids"].ravel().tolist()) for split in generators.SPLITS}
    for split, pool in zip(generators.SPLITS, (train, val, test)):
        assert used[split] <= set(pool.tolist())
    assert not (used["training"] & used["validation"] or used["training"] & used["test"])
    assert not used["validation"] & used["test"]
    ids = data["training"]["digit_ids"]  # (N, 3)
    assert np.all(ids[:, 0] != ids[:, 1]) and np.all(ids[:, 1] != ids[:, 2]) and np.all(ids[:, 0] != ids[:, 2])


def test_medium_variants_use_at_most_n_distinct_digits(tmp_path: Path) -> None:
    """medium20 shows at most 20 distinct digit images per split, drawn from the full pools' prefixes."""
    path = generate_dataset("flying_mnist_2_medium20", tmp_path / "m.h5", sizes=(200, 60, 60), frames=2, progress=False)
    data = _read(path)
    full = flying_mnist.digit_pools(5000)
    for split, pool in zip(generators.SPLITS, full):
        used = np.unique(data[split]["digit_ids"])
        assert len(used) <= 20 and set(used.tolist()) <= set(pool[:20].tolist())
    with pytest.raises(ValueError, match="variations"):
        flying_mnist.digit_pools(100, 20)


def test_mnist_groups_mark_the_single_bright_digit() -> None:
    """Features are the pixelwise max of the digits; group k only where digit k alone is brighter than 0.5."""
    digits = flying_mnist.downscale(np.random.default_rng(0).random((30, 28, 28), dtype=np.float32) ** 3)
    x, g, pos, ids = flying_mnist.sample_flying_mnist(np.random.default_rng(1), digits, np.arange(30), 40, 3, 2)
    for t, i in [(0, 0), (1, 17), (0, 39)]:
        layers = np.stack([_paste(digits[ids[i, k]], *pos[t, i, k], 24) for k in range(3)])  # (3, 24, 24)
        bright = layers > flying_mnist.BRIGHT
        expected = np.where(bright.sum(axis=0) == 1, np.argmax(bright, axis=0) + 1, 0)
        np.testing.assert_array_equal(x[t, i, :, :, 0], layers.max(axis=0))
        np.testing.assert_array_equal(g[t, i, :, :, 0], expected)


def test_draw_distinct_gives_distinct_uniform_picks() -> None:
    """Picks within a row are distinct and cover the whole candidate range."""
    picks = flying_mnist.draw_distinct(np.random.default_rng(0), 5, 2000, 3)
    assert np.all(np.sort(picks, axis=1)[:, 1:] != np.sort(picks, axis=1)[:, :-1])
    counts = np.bincount(picks.ravel(), minlength=5)
    assert counts.min() > 0.8 * counts.mean()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_no_file_and_no_temp(
    error: type[BaseException], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error or interrupt mid-write removes the temp file and leaves any existing target untouched."""
    calls = []
    original = shapes.sample_shapes

    def failing(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) == 2:  # fail after the training split has been written
            raise error("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(generators.shapes, "sample_shapes", failing)
    with pytest.raises(error):
        generate_dataset("shapes", tmp_path / "new.h5", sizes=TINY, progress=False)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
    old = tmp_path / "old.h5"
    old.write_bytes(b"previous")
    calls.clear()
    with pytest.raises(error):
        generate_dataset("shapes", old, sizes=TINY, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["old.h5"] and old.read_bytes() == b"previous"


def test_bad_arguments_raise_clear_value_errors(tmp_path: Path) -> None:
    """Unknown names list the valid ones; bad sizes, frames and seeds are named."""
    with pytest.raises(ValueError, match="valid names: shapes, flying_shapes_3"):
        generate_dataset("balls", tmp_path / "x.h5")
    with pytest.raises(ValueError, match="sizes"):
        generate_dataset("shapes", tmp_path / "x.h5", sizes=(10, 0, 10))
    with pytest.raises(ValueError, match="frames"):
        generate_dataset("flying_shapes_3", tmp_path / "x.h5", sizes=TINY, frames=1)
    with pytest.raises(ValueError, match="seed"):
        generate_dataset("shapes", tmp_path / "x.h5", seed=-1)
    assert list(tmp_path.iterdir()) == []


def test_mnist_files_in_idx_gzip_and_npz_form_load_alike(tmp_path: Path) -> None:
    """idx, gzipped idx and .npz (x_train, 0..255 or flattened) sources give the same digits."""
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(_idx_bytes(images))
    np.savez(tmp_path / "mnist.npz", x_train=images, y_train=np.zeros(40))
    np.savez(tmp_path / "flat.npz", images.reshape(40, 784))
    expected = images.astype(np.float32) / 255
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "mnist.npz", "flat.npz"):
        np.testing.assert_allclose(flying_mnist.load_digits(tmp_path / name), expected, rtol=1e-6)


def test_malformed_mnist_files_are_refused_with_the_file_named(tmp_path: Path) -> None:
    """Missing, garbage, label, truncated and wrongly shaped files each raise a message naming the file."""
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 0x801, 3) + bytes(3))
    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(_idx_bytes(np.zeros((3, 28, 28)))[:-10])
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"hello world, not digits")
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(b"\x1f\x8b" + b"\x00" * 30)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, a=np.zeros((3, 28, 28)), b=np.zeros(3))
    with pytest.raises(ValueError, match="not found"):
        flying_mnist.load_digits(tmp_path / "missing.gz")
    cases = [(labels, "label file"), (truncated, "truncated"), (garbage, "not an idx"), (bad_gz, "unreadable")]
    for path, pattern in [*cases, (wrong, "x_train")]:
        with pytest.raises(ValueError, match=pattern) as info:
            flying_mnist.load_digits(path)
        assert path.name in str(info.value)


def test_cli_writes_a_file_and_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nem-data` writes the named dataset, then refuses to replace it unless --force is given."""
    out = tmp_path / "data" / "fs.h5"
    sizes = ["--train", "4", "--val", "2", "--test", "2"]
    args = ["flying-shapes", "--objects", "4", "--frames", "6", *sizes, "--no-progress", "--out", str(out)]
    before = signal.getsignal(signal.SIGTERM)
    main(args)
    assert signal.getsignal(signal.SIGTERM) is before  # in-process use leaves the caller's SIGTERM handler
    with h5py.File(out, "r") as f:
        assert f.attrs["name"] == "flying_shapes_4" and f["test"]["features"].shape == (6, 2, 28, 28, 1)
    assert "wrote flying_shapes_4" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "already exists" in err and "--force" in err and "Traceback" not in err
    main([*args, "--force", "--seed", "3"])
    with h5py.File(out, "r") as f:
        assert f.attrs["seed"] == 3


def test_cli_reports_missing_or_malformed_mnist_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --mnist file ends with one error line and exit code 2, and no output file."""
    garbage = tmp_path / "digits.bin"
    garbage.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    for source, pattern in [(tmp_path / "nope.npz", "not found"), (garbage, "digits.bin")]:
        with pytest.raises(SystemExit) as info:
            main(["flying-mnist", "--mnist", str(source), "--out", str(tmp_path / "m.h5"), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and pattern in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.h5").exists()


def test_cli_uses_a_user_mnist_file_and_maps_variations(tmp_path: Path) -> None:
    """--mnist with an idx file and --variations 20 produce flying_mnist_2_medium20 from those digits."""
    images = np.random.default_rng(0).integers(0, 256, (250, 28, 28), dtype=np.uint8)
    source = tmp_path / "train-images-idx3-ubyte"
    source.write_bytes(_idx_bytes(images))
    out = tmp_path / "m.h5"
    sizes = ["--train", "6", "--val", "3", "--test", "3"]
    options = ["--variations", "20", "--mnist", str(source), "--frames", "3", *sizes, "--no-progress"]
    main(["flying-mnist", *options, "--out", str(out)])
    with h5py.File(out, "r") as f:
        assert f.attrs["name"] == "flying_mnist_2_medium20" and f.attrs["digit_source"] == source.name
        assert f.attrs["digit_source_count"] == 250 and f["training"]["features"].shape == (3, 6, 24, 24, 1)


def test_cli_help_and_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists the three commands; an invalid option value exits 2 with one line."""
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and all(c in out for c in ("shapes", "flying-shapes", "flying-mnist"))
    for bad in (["flying-shapes", "--objects", "7"], ["flying-mnist", "--digits", "3", "--variations", "20"]):
        with pytest.raises(SystemExit) as info:
            main(bad)
        assert info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_nem_data_refuses_a_directory_before_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(command, "generate_dataset", lambda *a, **k: pytest.fail("generated before refusing"))
    with pytest.raises(SystemExit) as info:
        main(["flying-shapes", "--force", "--out", str(tmp_path)])
    assert info.value.code == 2 and "is a directory" in capsys.readouterr().err
