"""The flying-MNIST generator: disjoint digit pools, groups of the bright digit, and MNIST files read as idx,
gzip or npz, through `nem-data` too."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import paste, read_h5
from nem_lightning import generators
from nem_lightning.generators import flying_mnist, generate_dataset
from nem_lightning.generators.command import main


def _idx_bytes(images: np.ndarray, magic: int = 0x803) -> bytes:
    """Encode uint8 images (N, 28, 28) as an idx3-ubyte file."""
    return struct.pack(">IIII", magic, len(images), 28, 28) + images.astype(np.uint8).tobytes()


def test_mnist_pools_are_disjoint_and_splits_use_their_own(tmp_path: Path) -> None:
    """Training, validation and test digits come from disjoint pools of source images."""
    train, val, test = flying_mnist.digit_pools(5000)
    assert (len(train), len(val), len(test)) == (4000, 500, 500)
    assert len(np.unique(np.concatenate([train, val, test]))) == 5000
    data = read_h5(generate_dataset("flying_mnist_3", tmp_path / "m.h5", sizes=(60, 30, 30), frames=3, progress=False))
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
    data = read_h5(path)
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
        layers = np.stack([paste(digits[ids[i, k]], *pos[t, i, k], 24) for k in range(3)])  # (3, 24, 24)
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


def test_mnist_motion_follows_max_speed(tmp_path: Path) -> None:
    """--max-speed S draws digit velocities from [-S, S]^2, standing still included; the default never stands still."""
    digits = np.random.default_rng(1).random((40, flying_mnist.DIGIT_SIZE, flying_mnist.DIGIT_SIZE), dtype=np.float32)
    pool = np.arange(40)
    slow = generators.sprites.velocity_table(1)
    _, _, positions, _ = flying_mnist.sample_flying_mnist(np.random.default_rng(0), digits, pool, 300, 2, 6, slow)
    steps = np.abs(np.diff(positions, axis=0))  # (T - 1, N, n, 2)
    assert steps.max() == 1 and (steps.sum(axis=(0, 3)) == 0).any()  # some digits stand still
    _, _, positions, _ = flying_mnist.sample_flying_mnist(np.random.default_rng(0), digits, pool, 300, 2, 6)
    steps = np.abs(np.diff(positions, axis=0))
    assert steps.max() == 3 and (steps.sum(axis=(0, 3)) > 0).all()  # every digit moves
    sizes = ["--train", "4", "--val", "2", "--test", "2", "--frames", "3", "--no-progress"]
    main(["flying-mnist", *sizes, "--max-speed", "1", "--out", str(tmp_path / "slow.h5")])
    main(["flying-mnist", *sizes, "--out", str(tmp_path / "default.h5")])
    with h5py.File(tmp_path / "slow.h5", "r") as f:
        assert f.attrs["max_speed"] == 1 and bool(f.attrs["standing_still"]) is True
    with h5py.File(tmp_path / "default.h5", "r") as f:
        assert f.attrs["max_speed"] == 3 and bool(f.attrs["standing_still"]) is False
    with pytest.raises(ValueError, match="max_speed must be an integer from 0 to 10"):
        generate_dataset("flying_mnist_2", tmp_path / "bad.h5", sizes=(4, 2, 2), frames=3, max_speed=-1, progress=False)


def test_speed1_datasets_are_the_base_data_at_one_pixel_per_frame(tmp_path: Path, monkeypatch) -> None:
    """flying_mnist_*_speed1 write the arrays of the base name with max_speed=1; a max_speed named in the call wins;
    `nem-data --max-speed 1` names its file and dataset after them."""
    options = {"sizes": (6, 3, 3), "frames": 4, "progress": False, "seed": 5}
    for base in ("flying_mnist_2", "flying_mnist_3", "flying_mnist_2_medium20", "flying_mnist_2_medium500"):
        named = generate_dataset(f"{base}_speed1", tmp_path / "named.h5", **options)
        slow = read_h5(generate_dataset(base, tmp_path / "slow.h5", max_speed=1, **options))
        fast = read_h5(generate_dataset(base, tmp_path / "fast.h5", **options))
        with h5py.File(named, "r") as f:
            assert f.attrs["name"] == f"{base}_speed1" and f.attrs["max_speed"] == 1
        for split, arrays in read_h5(named).items():
            for key, array in arrays.items():
                assert np.array_equal(array, slow[split][key]), (base, split, key)
            assert not np.array_equal(arrays["features"], fast[split]["features"])
    override = generate_dataset("flying_mnist_2_speed1", tmp_path / "o.h5", max_speed=2, **options)
    with h5py.File(override, "r") as f:
        assert f.attrs["max_speed"] == 2
    monkeypatch.chdir(tmp_path)
    sizes = ["--train", "4", "--val", "2", "--test", "2", "--frames", "3", "--no-progress"]
    main(["flying-mnist", *sizes, "--max-speed", "1", "--variations", "20"])
    with h5py.File(tmp_path / "data" / "flying_mnist_2_medium20_speed1.h5", "r") as f:
        assert f.attrs["name"] == "flying_mnist_2_medium20_speed1"
