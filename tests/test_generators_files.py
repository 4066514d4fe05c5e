"""The files every generator writes, at tiny sizes: layout, determinism, reference hashes, complete and atomic
writes, argument checks, and the `nem-data` command."""

from __future__ import annotations

import ast
import hashlib
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import TINY, read_h5
from nem_lightning import generators
from nem_lightning.generators import DATASET_NAMES, command, generate_dataset, shapes
from nem_lightning.generators.command import main


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
    data = read_h5(path)
    objects = int(name.split("_")[2]) if not static else 3
    for split in data.values():
        x, g = split["features"], split["groups"]
        assert 0 <= x.min() and x.max() <= 1 and x.max() > 0
        assert set(np.unique(g)) <= set(range(objects + 1)) and g.max() == objects
        if "mnist" not in name:
            assert set(np.unique(x)) == {0.0, 1.0}
        assert np.all(x[g > 0] > 0)  # a labelled pixel is never background


def test_same_seed_gives_identical_arrays_and_other_seeds_differ(tmp_path: Path) -> None:
    """Generation is a pure function of the seed: equal seeds match bit for bit, different seeds do not."""
    for name in ("shapes", "flying_shapes_3", "flying_mnist_2"):
        a = read_h5(generate_dataset(name, tmp_path / "a.h5", seed=7, sizes=TINY, frames=5, progress=False))
        b = read_h5(generate_dataset(name, tmp_path / "b.h5", seed=7, sizes=TINY, frames=5, progress=True))
        c = read_h5(generate_dataset(name, tmp_path / "c.h5", seed=8, sizes=TINY, frames=5, progress=False))
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
    x = read_h5(path)["training"]["features"]  # (1, BLOCK + 7, 28, 28, 1)
    assert np.all(x.sum(axis=(0, 2, 3, 4)) >= shapes.SQUARE.sum())


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
