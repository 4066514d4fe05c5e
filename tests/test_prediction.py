"""The HDF5 prediction writer: layout, ordering, scores, rank files and atomic writes."""

import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from nem_lightning.errors import ConfigError
from nem_lightning.metrics import adjusted_mutual_info, adjusted_rand_index
from nem_lightning.prediction import HDF5PredictionWriter

T, K, C, H, W = 3, 3, 1, 6, 6
SINGLE = SimpleNamespace(world_size=1, global_rank=0)


def outputs(indices, seed=0, groups=True, group_steps=T):
    """What predict_step returns for a batch with these sample indices: gamma/preds/groups drawn per index."""
    out = {"index": torch.tensor(indices), "gammas": [], "preds": [], "groups": []}
    for i in indices:
        g = torch.Generator().manual_seed(seed * 1000 + int(i))
        gamma = torch.rand(T, K, H, W, generator=g)
        out["gammas"].append(gamma / gamma.sum(1, keepdim=True))
        out["preds"].append(torch.rand(T, K, C, H, W, generator=g))
        out["groups"].append(torch.randint(0, 4, (group_steps, H, W), generator=g))
    out = {name: v if name == "index" else torch.stack(v) for name, v in out.items()}
    if not groups:
        del out["groups"]
    return out


def read(path):
    """Every dataset and the root attributes of a written file."""
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


def test_rows_are_sorted_by_sample_index_with_float32_gamma_and_pred(tmp_path):
    """Batches arriving out of order are written sorted by index, each row holding that sample's values."""
    batches = [outputs([5, 1, 3]), outputs([0, 4]), outputs([2])]
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, batches, [])
    data, attrs = read(path)
    np.testing.assert_array_equal(data["index"], np.arange(6))
    expected = outputs(list(range(6)))
    assert data["gamma"].dtype == np.float32 and data["gamma"].shape == (6, T, K, H, W)
    assert data["pred"].dtype == np.float32 and data["pred"].shape == (6, T, K, C, H, W)
    np.testing.assert_array_equal(data["gamma"], expected["gammas"].numpy())
    np.testing.assert_array_equal(data["pred"], expected["preds"].numpy())
    np.testing.assert_array_equal(data["groups"], expected["groups"].numpy())
    assert (attrs["k"], attrs["steps"], attrs["num_samples"], attrs["ami_normaliser"]) == (K, T, 6, "max")


def test_mask_is_the_argmax_over_components_as_uint8(tmp_path):
    """mask (N, T, H, W) is argmax_k gamma stored as uint8."""
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [outputs([0, 1, 2, 3])], [])
    data, _ = read(path)
    assert data["mask"].dtype == np.uint8 and data["mask"].shape == (4, T, H, W)
    np.testing.assert_array_equal(data["mask"], data["gamma"].argmax(2))


def test_scores_match_the_functional_metrics_and_are_nan_without_scored_pixels(tmp_path):
    """Stored ami/ari equal adjusted_mutual_info/adjusted_rand_index of the last step; all-background reads NaN."""
    batch = outputs([0, 1, 2, 3])
    batch["groups"][2] = 0  # sample 2 has no pixel to score
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [batch], [])
    data, _ = read(path)
    ami, valid = adjusted_mutual_info(batch["gammas"][:, -1], batch["groups"][:, -1], average_method="max")
    ari, _ = adjusted_rand_index(batch["gammas"][:, -1], batch["groups"][:, -1])
    assert data["ami"].dtype == np.float64 and data["ari"].dtype == np.float64
    assert valid.tolist() == [True, True, False, True]
    np.testing.assert_array_equal(np.isnan(data["ami"]), ~valid.numpy())
    np.testing.assert_array_equal(np.isnan(data["ari"]), ~valid.numpy())
    np.testing.assert_allclose(data["ami"][valid.numpy()], ami[valid].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["ari"][valid.numpy()], ari[valid].numpy(), rtol=0, atol=1e-12)


def test_static_groups_with_one_step_are_scored(tmp_path):
    """Groups with a single step (static data) are stored as (N, 1, H, W) and still scored."""
    batch = outputs([0, 1], group_steps=1)
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [batch], [])
    data, _ = read(path)
    ami, _ = adjusted_mutual_info(batch["gammas"][:, -1], batch["groups"][:, 0])
    assert data["groups"].shape == (2, 1, H, W)
    np.testing.assert_allclose(data["ami"], ami.numpy(), rtol=0, atol=1e-12)


def test_without_groups_no_scores_are_written_and_source_is_an_attribute(tmp_path):
    """Without groups the file has no groups/ami/ari; the source option becomes a root attribute."""
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path), source="data/shapes.h5").write_on_epoch_end(
        SINGLE, None, [outputs([0, 1], groups=False)], []
    )
    data, attrs = read(path)
    assert sorted(data) == ["gamma", "index", "mask", "pred"]
    assert attrs["source"] == "data/shapes.h5"


def test_repeated_indices_are_written_once(tmp_path):
    """A sample predicted twice (a padded last batch) appears once in the file."""
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [outputs([0, 1]), outputs([1, 2])], [])
    data, _ = read(path)
    np.testing.assert_array_equal(data["index"], [0, 1, 2])
    assert data["gamma"].shape[0] == 3


def test_lightning_batch_indices_are_used_when_predict_step_gives_no_index(tmp_path):
    """Without an index in the output, Lightning's per-dataloader batch indices order the rows."""
    batches = [outputs([7, 2]), outputs([5])]
    for b in batches:
        del b["index"]
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, batches, [[[7, 2], [5]]])
    data, _ = read(path)
    np.testing.assert_array_equal(data["index"], [2, 5, 7])
    np.testing.assert_array_equal(data["gamma"][0], outputs([2])["gammas"][0].numpy())


def test_several_processes_write_one_file_per_rank(tmp_path):
    """With world_size 2, rank 1 writes <stem>.rank1.h5 (parent folders created) and not the plain name."""
    path = tmp_path / "out" / "preds.h5"
    rank1 = SimpleNamespace(world_size=2, global_rank=1)
    HDF5PredictionWriter(str(path)).write_on_epoch_end(rank1, None, [outputs([1, 3])], [])
    assert os.listdir(path.parent) == ["preds.rank1.h5"]
    data, _ = read(path.parent / "preds.rank1.h5")
    np.testing.assert_array_equal(data["index"], [1, 3])


def test_an_existing_directory_as_output_is_refused(tmp_path):
    """An output path that is a directory raises ConfigError naming the output option."""
    with pytest.raises(ConfigError, match="output"):
        HDF5PredictionWriter(str(tmp_path)).write_on_epoch_end(SINGLE, None, [outputs([0])], [])


def test_wrong_output_format_is_refused(tmp_path):
    """A predict_step output without gammas, or with mismatched groups, raises ConfigError and writes nothing."""
    path = tmp_path / "preds.h5"
    with pytest.raises(ConfigError, match="gammas"):
        HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [{"index": torch.tensor([0])}], [])
    bad = outputs([0, 1])
    bad["groups"] = bad["groups"][:, :, :-1]  # wrong width
    with pytest.raises(ConfigError, match="groups"):
        HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [bad], [])
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """If HDF5 writing fails midway, the previous file is untouched and no temporary file remains."""
    path = tmp_path / "preds.h5"
    path.write_bytes(b"previous run")
    original = h5py.Group.create_dataset

    def fail_on_mask(self, name, *args, **kwargs):
        if name == "mask":
            raise OSError("disk full")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_mask)
    with pytest.raises(OSError, match="disk full"):
        HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [outputs([0, 1])], [])
    assert os.listdir(tmp_path) == ["preds.h5"] and path.read_bytes() == b"previous run"


class ReversedIndexData(Dataset):
    """Item i carries sample index N-1-i, so the file order is the reverse of the loader order."""

    def __init__(self, n=6):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        index = self.n - 1 - i
        out = outputs([index])
        return {name: v[0] for name, v in out.items()}


class PassThrough(pl.LightningModule):
    """predict_step returns the module's dict format from the batch itself."""

    def predict_step(self, batch, batch_idx):
        return {name: batch[name] for name in ("index", "gammas", "preds", "groups")}


def test_end_to_end_with_a_trainer(tmp_path):
    """Trainer.predict with the writer produces one file sorted by index whose mask and AMI agree with gamma."""
    path = tmp_path / "run" / "preds.h5"
    writer = HDF5PredictionWriter(str(path), source="tiny.h5")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[writer],
    )
    trainer.predict(PassThrough(), DataLoader(ReversedIndexData(6), batch_size=4), return_predictions=False)
    data, attrs = read(path)
    expected = outputs(list(range(6)))
    np.testing.assert_array_equal(data["index"], np.arange(6))
    assert data["gamma"].shape == (6, T, K, H, W) and data["pred"].shape == (6, T, K, C, H, W)
    np.testing.assert_array_equal(data["gamma"], expected["gammas"].numpy())
    np.testing.assert_array_equal(data["mask"], data["gamma"].argmax(2))
    ami, valid = adjusted_mutual_info(torch.from_numpy(data["gamma"][:, -1]), torch.from_numpy(data["groups"][:, -1]))
    assert valid.all()
    np.testing.assert_allclose(data["ami"], ami.numpy(), rtol=0, atol=1e-12)
    assert (attrs["k"], attrs["steps"], attrs["source"]) == (K, T, "tiny.h5")
    assert os.listdir(path.parent) == ["preds.h5"]


def test_the_file_gets_ordinary_permissions(tmp_path):
    """The atomic write keeps the umask's permissions (a plain temporary file would be private, 0600)."""
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    path = tmp_path / "preds.h5"
    HDF5PredictionWriter(str(path)).write_on_epoch_end(SINGLE, None, [outputs([0])], [])
    assert os.stat(path).st_mode & 0o777 == os.stat(reference).st_mode & 0o777
