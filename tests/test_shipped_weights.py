"""The trained weights shipped in weights/ load with `nem test` and `nem predict` and still group objects."""

from pathlib import Path

import h5py
import pytest
import torch

from nem_lightning.checkpoints import main as export_main
from nem_lightning.checkpoints import save_weights_only
from nem_lightning.cli import run
from nem_lightning.errors import ConfigError
from nem_lightning.generators import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
# file -> (config, dataset, test AMI floor on 64 fresh sequences);
# docs/results.md lists the full test scores
# (K = 1 groups nothing: the recurrent autoencoder is held to a ceiling on its next-step BCE instead)
SHIPPED = {
    "flying_shapes.ckpt": ("flying_shapes.yaml", "flying_shapes_3", 0.70),
    "flying_shapes_3obj_k5.ckpt": ("flying_shapes_3obj_k5.yaml", "flying_shapes_3", 0.70),
    "flying_shapes_5obj_k3.ckpt": ("flying_shapes_5obj_k3.yaml", "flying_shapes_5", 0.45),
    "flying_shapes_5obj_k5.ckpt": ("flying_shapes_5.yaml", "flying_shapes_5", 0.70),
    "flying_shapes_4obj_k4.ckpt": ("flying_shapes_4.yaml", "flying_shapes_4", 0.70),
    "flying_mnist.ckpt": ("flying_mnist.yaml", "flying_mnist_2_speed1", 0.45),
    "flying_mnist_stage1_speed1.ckpt": ("flying_mnist_stage1.yaml", "flying_mnist_2_medium20_speed1", 0.30),
    "flying_shapes_rnn_3obj.ckpt": ("flying_shapes_rnn.yaml", "flying_shapes_3", -200.0),
    "flying_shapes_rnn_4obj.ckpt": ("flying_shapes_rnn_4obj.yaml", "flying_shapes_4", -270.0),
    "flying_shapes_rnn_5obj.ckpt": ("flying_shapes_rnn_5obj.yaml", "flying_shapes_5", -310.0),
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
    metrics = cli.trainer.callback_metrics
    if floor < 0:  # a ceiling on the next-step BCE (the shipped file scores 166.7)
        assert metrics["test/upper_bound_last"] <= -floor
    else:
        assert metrics["test/ami"] >= floor
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


def test_nem_export_writes_half_precision_weights_that_load(tmp_path, capsys):
    """`nem-export --half` stores float16 weights at about half the size; they load into the float32 model."""
    from nem_lightning.module import NEMLightningModule

    model = NEMLightningModule(k=2, steps=2)
    source = tmp_path / "full.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": "2.6",
            "optimizer_states": [{}],
            "loops": {"fit_loop": {}},
        },
        source,
    )
    export_main([str(source), str(tmp_path / "w32.ckpt")])
    export_main([str(source), str(tmp_path / "w16.ckpt"), "--half"])
    assert "wrote the weights" in capsys.readouterr().out
    half = torch.load(tmp_path / "w16.ckpt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
    assert (tmp_path / "w16.ckpt").stat().st_size < 0.6 * (tmp_path / "w32.ckpt").stat().st_size
    fresh = NEMLightningModule(k=2, steps=2)
    fresh.load_state_dict(half)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, atol=1e-3, rtol=1e-3)
    with pytest.raises(SystemExit) as info:
        export_main([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.ckpt")])
    assert info.value.code == 2 and "missing.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()
