"""Reading the official HDF5 layout: shapes, subsets, lazy workers and clear errors."""

import pickle

import h5py
import numpy as np
import pytest
import torch

from helpers import random_static, write_official_layout
from nem_lightning.data import GroupingDataModule, GroupingDataset
from nem_lightning.errors import DataError


def test_reads_a_file_written_by_another_tool(foreign_shapes_file):
    """uint8 features/groups with an extra dataset are read as float features and int64 groups."""
    ds = GroupingDataset(foreign_shapes_file, "test")
    batch = ds.__getitems__([3, 0, 7])[0]
    features, groups = random_static(40, 2)
    assert batch["features"].shape == (3, 1, 1, 28, 28) and batch["features"].dtype == torch.float32
    assert batch["groups"].shape == (3, 1, 28, 28) and batch["groups"].dtype == torch.int64
    np.testing.assert_array_equal(batch["groups"][0, 0].numpy(), groups[0, 3, :, :, 0])
    np.testing.assert_array_equal(batch["features"][1, 0, 0].numpy(), features[0, 0, :, :, 0])


@pytest.mark.parametrize("in_memory", [True, False])
def test_batches_keep_the_requested_order(shapes_file, in_memory):
    """Unsorted indices come back in the order asked, from memory or from disk alike."""
    ds = GroupingDataset(shapes_file, "training", in_memory=in_memory)
    batch = ds.__getitems__([5, 1, 9])[0]
    with h5py.File(shapes_file) as f:
        expected = f["training/features"][0, [1, 5, 9], :, :, 0]
    np.testing.assert_array_equal(batch["features"][:, 0, 0].numpy(), expected[[1, 0, 2]])
    assert batch["index"].tolist() == [5, 1, 9]


def test_subsets_take_the_first_samples_and_validation_defaults_to_1000(shapes_file):
    """train_size/test_size pick leading samples; val_size 1000 is capped at what the file holds."""
    dm = GroupingDataModule(shapes_file, train_size=10, test_size=5)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.dataset("training")) == 10 and len(dm.dataset("test")) == 5
    assert len(dm.dataset("validation")) == 48
    with pytest.raises(DataError, match="asked for 500 test samples, the file holds 48"):
        GroupingDataModule(shapes_file, test_size=500).setup("test")


def test_dataloader_batches_and_workers_reopen_the_file(shapes_file):
    """Batches are (B, T, C, H, W); the dataset pickles after use, so workers open the file lazily."""
    dm = GroupingDataModule(shapes_file, batch_size=16, num_workers=1, in_memory=False)
    dm.setup("fit")
    ds = dm.dataset("training")
    ds.__getitems__([0])
    assert pickle.loads(pickle.dumps(ds))._file is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["features"].shape == (16, 1, 1, 28, 28) and batch["groups"].shape == (16, 1, 28, 28)


def test_missing_file_is_generated_on_first_use(tmp_path, monkeypatch):
    """prepare_data writes the named dataset when data.path does not exist."""
    import nem_lightning.generators as generators

    calls = []
    real = generators.generate_dataset
    monkeypatch.setattr(
        generators,
        "generate_dataset",
        lambda name, path, seed: calls.append(seed) or real(name, path, seed=seed, sizes=(8, 4, 4), progress=False),
    )
    path = tmp_path / "sub" / "shapes.h5"
    GroupingDataModule(str(path), generate="shapes", generate_seed=3).prepare_data()
    assert path.exists() and calls == [3]


def test_missing_file_without_generate_names_the_option(tmp_path):
    """No file and no data.generate: one message naming data.path."""
    with pytest.raises(DataError, match="data.path .*does not exist"):
        GroupingDataModule(str(tmp_path / "nope.h5")).prepare_data()


def _expect_error(path, match, split="training"):
    with pytest.raises(DataError, match=match) as info:
        GroupingDataset(str(path), split).__getitems__([0])
    assert str(path) in str(info.value)


def test_not_an_hdf5_file(tmp_path):
    """A text file is refused as not HDF5."""
    path = tmp_path / "bad.h5"
    path.write_text("hello")
    _expect_error(path, "not a readable HDF5 file")


def test_missing_split_and_missing_dataset(tmp_path):
    """A missing split lists what was found; a split without features says so."""
    f, g = random_static(4)
    path = write_official_layout(tmp_path / "a.h5", {"training": (f, g)})
    _expect_error(path, "missing split 'test'", split="test")
    with h5py.File(tmp_path / "b.h5", "w") as h:
        h.create_group("training").create_dataset("groups", data=g)
    _expect_error(tmp_path / "b.h5", "training/features is missing")


def test_missing_groups(tmp_path):
    """Scoring needs groups: a split without them is refused."""
    with h5py.File(tmp_path / "c.h5", "w") as h:
        h.create_group("training").create_dataset("features", data=np.zeros((1, 2, 4, 4, 1)))
    _expect_error(tmp_path / "c.h5", "training/groups is missing")


def test_wrong_rank(tmp_path):
    """Features must be rank 5 (T, N, H, W, C)."""
    with h5py.File(tmp_path / "d.h5", "w") as h:
        h.create_group("training").create_dataset("features", data=np.zeros((2, 4, 4)))
    _expect_error(tmp_path / "d.h5", r"expected rank 5 \(T, N, H, W, C\)")


def test_features_groups_shape_mismatch(tmp_path):
    """Groups must match the features' (T, N, H, W)."""
    f, g = random_static(4)
    path = write_official_layout(tmp_path / "e.h5", {"training": (f, g[:, :3])})
    _expect_error(path, "does not match features")


@pytest.mark.parametrize("bad,match", [(2.0, r"must lie in \[0, 1\]"), (np.nan, "NaN or infinite")])
def test_feature_values_outside_unit_interval(tmp_path, bad, match):
    """Features above 1 or NaN are refused with the split named."""
    f, g = random_static(4)
    f[0, 1, 2, 2, 0] = bad
    path = write_official_layout(tmp_path / "f.h5", {"training": (f, g)}, dtype=np.float32)
    _expect_error(path, match)


def test_negative_or_fractional_groups(tmp_path):
    """Group labels must be non-negative integers."""
    f, g = random_static(4)
    g = g.astype(np.float32)
    g[0, 0, 0, 0, 0] = 1.5
    path = write_official_layout(tmp_path / "g.h5", {"training": (f, g)}, dtype=np.float32)
    _expect_error(path, "non-negative integer labels")


def test_bad_options_name_the_option():
    """Impossible data options are refused at construction."""
    with pytest.raises(DataError, match="data.batch_size"):
        GroupingDataModule(batch_size=0)
    with pytest.raises(DataError, match="data.train_size"):
        GroupingDataModule(train_size=0)


def test_a_file_from_an_older_generator_is_refused_by_name(tmp_path, shapes_file):
    """A data.generate file written by another generator version is named, not silently trained on."""
    import shutil

    old = tmp_path / "old.h5"
    shutil.copy(shapes_file, old)
    with h5py.File(old, "a") as f:
        f.attrs["generator_version"] = 1
    dm = GroupingDataModule(path=str(old), generate="shapes")
    with pytest.raises(DataError, match=r"old.h5 holds shapes from generator version 1, .*delete the file"):
        dm.prepare_data()
    GroupingDataModule(path=str(old), generate=None).prepare_data()  # kept on purpose: accepted
    GroupingDataModule(path=shapes_file, generate="shapes").prepare_data()  # current version: accepted


@pytest.mark.parametrize("top_label", [3, 300])
def test_loading_into_memory_block_by_block_gives_the_disk_batches(tmp_path, monkeypatch, top_label):
    """A split loaded in blocks (compact uint8 groups while labels fit, int64 beyond 255) reads as from disk."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 4, size=(3, 11, 6, 6, 1))
    groups[1, 10, 2, 2, 0] = top_label  # in the last, partial block
    features = rng.random((3, 11, 6, 6, 1)).astype(np.float32)
    path = write_official_layout(tmp_path / "f.h5", {"training": (features, groups)}, dtype=np.float32)
    monkeypatch.setattr("nem_lightning.data.LOAD_BLOCK", 4)
    memory = GroupingDataset(path, "training", in_memory=True)
    disk = GroupingDataset(path, "training", in_memory=False)
    indices = [10, 0, 5, 3, 9]
    got, want = memory.__getitems__(indices)[0], disk.__getitems__(indices)[0]
    assert got["groups"].dtype == torch.int64 and int(got["groups"].max()) == top_label
    torch.testing.assert_close(got["groups"], want["groups"])
    torch.testing.assert_close(got["features"], want["features"], rtol=0, atol=0)
    assert memory._cache[1].dtype == (torch.uint8 if top_label < 256 else torch.int64)
