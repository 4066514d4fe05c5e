"""Every shipped experiment config trains on tiny generated files; test-time generalisation overrides."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import nem_lightning
from helpers import (
    CONFIGS,
    WEIGHTS,
    fails_with,
    fit_args,
    record_scoring,
    reference_test_ami,
    scored_arrays,
    write_official_layout,
)
from nem_lightning.cli import run
from nem_lightning.generators import generate_dataset
from nem_lightning.options import load_config

EXPERIMENTS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "debug.yaml")
FRAMES = 6  # tiny sequences: 3 EM steps need 4 frames; the rest shows longer files are fine


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """One tiny file per dataset a shipped config names, generated on demand and cached."""
    folder, made = tmp_path_factory.mktemp("tiny"), {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = str(
                generate_dataset(name, folder / f"{name}.h5", sizes=(32, 16, 16), frames=FRAMES, progress=False)
            )
        return made[name]

    return get


def _args(subcommand, config, data_path, out, *extra):
    """`nem <subcommand>` of a shipped config on a tiny file: batch 8, no loader workers."""
    return [subcommand, *fit_args(config, data_path, out, *extra, batch_size=8, steps=None, workers=0)[1:]]


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_every_shipped_config_trains_a_few_steps(config, tiny_files, tmp_path):
    """Each config in configs/ fits 2 epochs of 4 batches on its own (tiny) dataset and validates."""
    settings = load_config(CONFIGS / config)
    path = tiny_files(settings["data"]["generate"])
    steps = [] if settings["model"]["steps"] < FRAMES else ["--model.steps", "3"]
    cli = run(_args("fit", config, path, tmp_path, *steps))
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 8 and torch.isfinite(metrics["val/loss"])
    assert "val/ami" in metrics
    if settings["model"]["score_steps"] == "all":
        assert "val/next_frame_loss" in metrics


@pytest.mark.parametrize("config", EXPERIMENTS)
def test_experiment_configs_state_only_name_model_and_data_over_the_base(config, capsys, tmp_path):
    """Each experiment names its run after its file and takes trainer, loggers and callbacks from the base;
    one that names a shared model block (``base:``) states only its K and data (flying-MNIST stage 1 also its
    learning rate, the original's 1e-3)."""
    stated = yaml.safe_load((CONFIGS / config).read_text())
    settings = load_config(CONFIGS / config)
    assert settings["name"] == stated["name"] == Path(config).stem
    assert set(stated) <= {"base", "name", "model", "data", "trainer"}
    if "base" in stated:
        assert set(stated["model"]) == ({"k", "lr"} if config == "flying_mnist_stage1.yaml" else {"k"})
        assert set(stated["data"]) == {"path", "generate"}
        assert "trainer" not in stated
    assert set(settings.get("trainer") or {}) <= {"precision"}  # the flying configs' bf16, nothing else
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(CONFIGS / config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    base = yaml.safe_load((Path(nem_lightning.__file__).parent / "base.yaml").read_text())
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [
        c["class_path"] for c in base["trainer"]["callbacks"]
    ]
    assert printed["trainer"]["max_epochs"] == 500 and printed["seed_everything"] == 0
    assert printed["name"] == Path(config).stem and printed["base"] is None  # complete without its base
    assert {k: printed["model"][k] for k in settings["model"]} == settings["model"]


def test_a_run_of_an_experiment_with_a_base_saves_a_config_that_reruns_elsewhere(tiny_files, tmp_path):
    """The saved config.yaml of a flying-shapes run holds the whole model block and reruns from another folder."""
    path = tiny_files("flying_shapes_3")
    first = run(_args("fit", "flying_shapes.yaml", path, tmp_path, "--model.steps", "3", "--trainer.max_epochs=1"))
    saved = next(tmp_path.glob("flying_shapes/version_0/config.yaml"))
    moved = tmp_path / "elsewhere" / "config.yaml"
    moved.parent.mkdir()
    moved.write_text(saved.read_text())
    config = yaml.safe_load(moved.read_text())
    assert config["base"] is None and config["model"]["architecture"] == "flying_shapes"
    again = run(["fit", "--config", str(moved), "--trainer.enable_progress_bar", "false"])
    assert again.trainer.global_step == first.trainer.global_step > 0
    assert again.model.hparams == first.model.hparams


def test_a_missing_or_circular_base_is_one_line(tmp_path, capsys):
    from helpers import fails_with

    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    assert "its base 'b.yaml'" in fails_with(capsys, ["fit", "--config", str(tmp_path / "a.yaml")])
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    assert "names itself through its bases" in fails_with(capsys, ["fit", "--config", str(tmp_path / "a.yaml")])


def test_saved_config_names_the_loggers_after_the_run_and_reproduces_it(tiny_files, tmp_path):
    """A run's config.yaml holds the base's loggers with the run's name filled in, and runs again as is."""
    path = tiny_files("shapes")
    args = ["fit", "--config", str(CONFIGS / "shapes.yaml"), "--config", str(CONFIGS / "debug.yaml")]
    args += ["--data.path", path, "--model.steps", "2", "--trainer.max_epochs", "1", "--name", "mine"]
    first = run([*args, "--trainer.enable_progress_bar", "false"])
    saved = tmp_path / "runs" / "mine" / "version_0" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    assert [(lg["class_path"].rsplit(".", 1)[1], lg["init_args"]["name"]) for lg in config["trainer"]["logger"]] == [
        ("CSVLogger", "mine"),
        ("WandbLogger", "mine"),
    ]
    again = run(["fit", "--config", str(saved), "--trainer.enable_progress_bar", "false"])
    assert (
        again.trainer.global_step == first.trainer.global_step > 0
        and (tmp_path / "runs" / "mine" / "version_1").is_dir()
    )


@pytest.fixture(scope="module")
def flying_checkpoint(tiny_files, tmp_path_factory):
    """A tiny flying-shapes (3 objects, K=3) model and its last checkpoint."""
    out = tmp_path_factory.mktemp("flying")
    run(_args("fit", "flying_shapes.yaml", tiny_files("flying_shapes_3"), out, "--model.steps", "3"))
    return str(next(out.glob("flying_shapes/version_0/checkpoints/last.ckpt")))


def test_eval_overrides_change_k_steps_and_data_on_purpose(flying_checkpoint, tiny_files, caplog):
    """--eval.k/--eval.steps win over the checkpoint's options; a 5-object file and longer sequences score."""
    args = _args(
        "test",
        "flying_shapes.yaml",
        tiny_files("flying_shapes_5"),
        "unused",
        "--ckpt_path",
        flying_checkpoint,
        "--trainer.logger",
        "false",
        "--eval.k",
        "5",
        "--eval.steps",
        "5",
    )
    with caplog.at_level("INFO"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run(args)
    assert (cli.model.hparams.k, cli.model.hparams.steps) == (5, 5)
    assert not [w for w in caught if "is ignored" in str(w.message)]  # asked for on purpose: no warning
    assert "k=5, steps=5" in caplog.text  # the effective values are printed
    metrics = cli.trainer.callback_metrics
    assert {"test/ami", "test/next_frame_loss", "test/upper_bound"} <= set(metrics)


def test_without_overrides_the_checkpoint_options_hold(flying_checkpoint, tiny_files):
    """Without --eval.*, K and steps come from the checkpoint even if --model.k says otherwise, with a warning."""
    args = _args(
        "test",
        "flying_shapes.yaml",
        tiny_files("flying_shapes_3"),
        "unused",
        "--ckpt_path",
        flying_checkpoint,
        "--trainer.logger",
        "false",
        "--model.k",
        "7",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run(args)
    assert (cli.model.hparams.k, cli.model.hparams.steps) == (3, 3)
    expected = "trained with model.k=3 and is evaluated so; the config's k=7 is ignored"
    assert any(expected in str(w.message) for w in caught)


def test_too_many_steps_for_the_sequences_is_one_clear_error(flying_checkpoint, tiny_files, capsys):
    """Asking for more EM steps than the file's frames allow names the file, --eval.steps and the frame count."""
    with pytest.raises(SystemExit) as info:
        run(
            _args(
                "test",
                "flying_shapes.yaml",
                tiny_files("flying_shapes_3"),
                "unused",
                "--ckpt_path",
                flying_checkpoint,
                "--trainer.logger",
                "false",
                "--eval.steps",
                "9",
            )
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"flying_shapes_3.h5: the test sequences have {FRAMES} frames, but --eval.steps 9 needs at least 10" in err


def test_sequences_written_by_another_tool_are_read_unchanged(flying_checkpoint, tmp_path, monkeypatch):
    """A (T, N, H, W, 1) file of 7 frames from plain h5py scores with the 3-step model, its groups unchanged."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 4, size=(7, 12, 28, 28, 1))
    path = write_official_layout(
        tmp_path / "seq.h5", {"test": ((groups > 0).astype(np.float32), groups)}, dtype=np.float32
    )
    scored = record_scoring(monkeypatch)
    cli = run(
        _args(
            "test",
            "flying_shapes.yaml",
            path,
            "unused",
            "--ckpt_path",
            flying_checkpoint,
            "--trainer.logger",
            "false",
            "--trainer.precision",
            "32-true",
        )
    )
    # step t is scored against frame t + 1 of the file, for the model's 3 steps, sample by sample
    assert np.array_equal(scored_arrays(scored)[1], groups[1:4, :, :, :, 0].transpose(1, 0, 2, 3))
    expected = reference_test_ami(scored, score_steps="all")
    assert float(cli.trainer.callback_metrics["test/ami"]) == pytest.approx(expected, abs=1e-6)


def test_weights_from_starts_a_new_stage_from_a_checkpoint(flying_checkpoint, tiny_files, tmp_path):
    """--weights_from copies the weights only: the new run starts at step 0 with those weights."""
    state = torch.load(flying_checkpoint, weights_only=True)["state_dict"]
    cli_args = _args(
        "fit",
        "flying_shapes.yaml",
        tiny_files("flying_shapes_3"),
        tmp_path,
        "--model.steps",
        "3",
        "--weights_from",
        flying_checkpoint,
        "--trainer.max_epochs",
        "0",
    )
    cli = run(cli_args)
    for name, value in cli.model.state_dict().items():
        torch.testing.assert_close(value, state[name])
    assert cli.trainer.global_step == 0


def test_carry_optimizer_continues_adam_with_this_runs_learning_rate(flying_checkpoint, tiny_files, tmp_path):
    """--carry_optimizer starts Adam from the checkpoint's moments and step counts; the learning rate is this run's."""
    saved = torch.load(flying_checkpoint, weights_only=True)["optimizer_states"][0]
    assert saved["param_groups"][0]["lr"] == 1e-3 and saved["state"]
    common = ["--model.steps", "3", "--weights_from", flying_checkpoint, "--trainer.max_epochs", "0"]
    data = tiny_files("flying_shapes_3")
    cli = run(
        _args(
            "fit",
            "flying_shapes.yaml",
            data,
            tmp_path / "a",
            *common,
            "--model.lr",
            "2e-4",
            "--carry_optimizer",
            "true",
        )
    )
    state = cli.trainer.optimizers[0].state_dict()
    assert [g["lr"] for g in state["param_groups"]] == [2e-4]
    assert state["state"].keys() == saved["state"].keys()
    for index, moments in saved["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(state["state"][index][key], value)
    fresh = run(_args("fit", "flying_shapes.yaml", data, tmp_path / "b", *common))
    assert not fresh.trainer.optimizers[0].state_dict()["state"]  # without the option Adam starts afresh


def test_carry_optimizer_without_a_full_checkpoint_is_refused(tiny_files, tmp_path, capsys):
    """--carry_optimizer alone, or with a weights-only file, fails with one line saying what it needs."""
    data = tiny_files("flying_shapes_3")
    line = fails_with(capsys, _args("fit", "flying_shapes.yaml", data, tmp_path, "--carry_optimizer", "true"))
    assert "--carry_optimizer needs --weights_from" in line
    weights = str(WEIGHTS / "flying_shapes.ckpt")
    extra = ["--weights_from", weights, "--carry_optimizer", "true"]
    line = fails_with(capsys, _args("fit", "flying_shapes.yaml", data, tmp_path, *extra))
    assert "holds weights only, so --carry_optimizer has no optimizer state" in line and weights in line


def test_weights_from_a_different_architecture_is_refused(flying_checkpoint, tiny_files, tmp_path, capsys):
    """Loading flying-shapes weights into the static fc model fails with one line naming the option."""
    with pytest.raises(SystemExit) as info:
        run(
            [
                "fit",
                "--config",
                str(CONFIGS / "shapes.yaml"),
                "--config",
                str(CONFIGS / "debug.yaml"),
                "--data.path",
                tiny_files("shapes"),
                "--weights_from",
                flying_checkpoint,
                "--trainer.logger",
                "false",
            ]
        )
    assert info.value.code == 2
    assert "--weights_from" in capsys.readouterr().err
