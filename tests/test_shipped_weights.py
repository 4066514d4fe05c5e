"""The trained weights shipped in weights/ load with `nem test` and `nem predict` and still group objects."""

from pathlib import Path

import h5py
import pytest
import torch

from nem_lightning.cli import run, save_weights_only
from nem_lightning.errors import ConfigError
from nem_lightning.generators import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
# file -> (config, dataset, test AMI floor on 64 fresh sequences); the README lists the full test scores
SHIPPED = {
    "flying_shapes.ckpt": ("flying_shapes.yaml", "flying_shapes_3", 0.70),
    "shapes.ckpt": ("shapes.yaml", "shapes", 0.60),
    "shapes_nem.ckpt": ("shapes_nem.yaml", "shapes", 0.45),
}


def test_weights_folder_holds_exactly_the_listed_files():
    assert sorted(p.name for p in (ROOT / "weights").glob("*.ckpt")) == sorted(SHIPPED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_score_above_their_floor(name, tmp_path):
    """`nem test` with the shipped file on freshly generated data (another seed) clears the floor; predict works."""
    config, dataset, floor = SHIPPED[name]
    weights = ROOT / "weights" / name
    state = torch.load(weights, map_location="cpu", weights_only=False)
    assert "optimizer_states" not in state and state["loops"] is None  # weights only
    data = generate_dataset(dataset, tmp_path / "d.h5", seed=123, sizes=(4, 4, 64), progress=False)
    common = [
        "--config",
        str(ROOT / "configs" / config),
        "--ckpt_path",
        str(weights),
        "--data.path",
        str(data),
        "--data.num_workers",
        "0",
        "--trainer.logger",
        "false",
    ]
    cli = run(["test", *common])
    assert cli.trainer.callback_metrics["test/ami"] >= floor
    run(["predict", *common, "--output", str(tmp_path / "p.h5")])
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert len(f["ami"]) == 64


def test_weights_only_export_drops_the_optimizer_and_refuses_other_files(tmp_path):
    source = tmp_path / "full.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.ones(2)},
            "hyper_parameters": {"k": 3},
            "pytorch-lightning_version": "2.6",
            "optimizer_states": [{"big": torch.zeros(1000)}],
            "epoch": 4,
            "global_step": 9,
        },
        source,
    )
    save_weights_only(str(source), str(tmp_path / "w.ckpt"))
    state = torch.load(tmp_path / "w.ckpt", weights_only=False)
    assert set(state) == {
        "state_dict",
        "hyper_parameters",
        "pytorch-lightning_version",
        "epoch",
        "global_step",
        "loops",
    }
    assert state["global_step"] == 9 and not list(tmp_path.glob(".*"))  # no temporary file left
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="text.ckpt' could not be read as a training checkpoint"):
        save_weights_only(str(tmp_path / "text.ckpt"), str(tmp_path / "x.ckpt"))
    assert not (tmp_path / "x.ckpt").exists()
