"""`nem fit` end to end, in process: determinism, interrupt and resume, N-EM, loggers, figures, compile,
callbacks and run folders."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pytorch_lightning.callbacks import Callback

from helpers import CONFIGS, fit_args
from nem_lightning.cli import run


def test_same_seed_gives_the_same_training_metrics(shapes_file, tmp_path):
    """Two fits with the same seed on CPU log identical validation metrics."""
    metrics = []
    for folder in ("a", "b"):
        cli = run(fit_args("shapes.yaml", shapes_file, tmp_path / folder, "--trainer.max_epochs", "1"))
        metrics.append({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")})
    assert metrics[0] == metrics[1] and "val/ami" in metrics[0]


@pytest.mark.parametrize("how", ["keyboard", "sigterm"])
def test_interrupted_fit_leaves_last_ckpt_that_resumes(how, shapes_file, tmp_path):
    """Ctrl-C or SIGTERM mid-epoch writes last.ckpt; --ckpt_path last.ckpt resumes to the end."""
    stop = f'{{"class_path": "helpers.StopAt", "init_args": {{"step": 2, "how": "{how}"}}}}'
    args = fit_args("shapes.yaml", shapes_file, tmp_path, f"--trainer.callbacks+={stop}")
    with pytest.raises(SystemExit) as info:  # a graceful shutdown on either signal, never status 0
        run(args)
    assert info.value.code == (1 if how == "keyboard" else 143)
    last = tmp_path / "shapes" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    import torch

    assert torch.load(last, weights_only=False)["global_step"] == 2
    cli = run(fit_args("shapes.yaml", shapes_file, tmp_path, "--ckpt_path", str(last)))
    assert cli.trainer.global_step == 8  # 2 epochs x 4 batches, continued rather than restarted
    assert [p.name for p in (tmp_path / "shapes").iterdir()] == ["version_0"]  # resumed in its own folder
    assert Path(cli.trainer.log_dir) == tmp_path / "shapes" / "version_0"


def test_n_em_config_trains(shapes_file, tmp_path):
    """configs/shapes_nem.yaml trains N-EM and the learned step size changes."""
    cli = run(fit_args("shapes_nem.yaml", shapes_file, tmp_path))
    assert cli.model.hparams.m_step == "n_em"
    assert float(cli.model.em.cell.step_size) != 1.0
    assert "val/ami" in cli.trainer.callback_metrics


@pytest.mark.slow
def test_shipped_loggers_run_offline_and_runs_never_collide(shapes_file, tmp_path):
    """The configs' CSV + W&B loggers work with WANDB_MODE=offline; two runs in one folder keep their own config."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    nem = str(Path(sys.executable).with_name("nem"))
    for _ in range(2):
        done = subprocess.run(
            [
                nem,
                "fit",
                "--config",
                str(CONFIGS / "shapes.yaml"),
                "--config",
                str(CONFIGS / "debug.yaml"),
                "--data.path",
                shapes_file,
                "--model.steps",
                "2",
                "--trainer.max_epochs",
                "1",
                "--trainer.enable_progress_bar",
                "false",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    for version in ("version_0", "version_1"):
        saved = yaml.safe_load((tmp_path / "runs" / "shapes" / version / "config.yaml").read_text())
        assert saved["model"]["steps"] == 2
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 2


def test_validations_within_one_epoch_keep_their_own_figures(shapes_file, tmp_path):
    """With --trainer.val_check_interval each validation's figures are named by step, so none overwrites another."""
    run(
        fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.val_check_interval", "2", "--trainer.max_epochs", "1")
    )
    pictures = sorted(p.name for p in (tmp_path / "shapes" / "version_0" / "figures").glob("*_sample0.png"))
    assert pictures == ["epoch000_step0000002_sample0.png", "epoch000_step0000004_sample0.png"]


@pytest.mark.slow
def test_fit_with_compile_trains_through_the_compiled_unroll(shapes_file, tmp_path):
    """`--model.compile true` (the shapes configs' setting) fits end to end through torch.compile."""
    import torch

    torch._dynamo.reset()
    cli = run(fit_args("shapes.yaml", shapes_file, tmp_path, "--model.compile", "true", "--trainer.max_epochs", "1"))
    assert cli.model._compiled is not None and cli.trainer.global_step == 4
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


class CountBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1


def test_a_single_callback_replaces_the_configured_list(shapes_file, tmp_path):
    """`--trainer.callbacks` given one callback (not a list) is accepted, as Lightning's Trainer accepts it."""
    one = '{"class_path": "test_cli_fit.CountBatches"}'
    cli = run(fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.callbacks", one, "--trainer.max_epochs", "1"))
    counters = [c for c in cli.trainer.callbacks if isinstance(c, CountBatches)]
    assert len(counters) == 1 and counters[0].batches == 4


def test_run_folders_are_reserved_atomically(tmp_path, monkeypatch):
    """A folder created by another run between listing and mkdir is skipped, not shared."""
    from jsonargparse import Namespace

    from nem_lightning import runs

    taken = tmp_path / "shapes" / "version_0"
    taken.mkdir(parents=True)
    monkeypatch.setattr(runs, "_next_version", lambda root: 0)  # as if listed before the other run's mkdir
    logger = Namespace(
        class_path="pytorch_lightning.loggers.CSVLogger",
        init_args=Namespace(save_dir=str(tmp_path), name="shapes", version=None),
    )
    reservation = runs.reserve_run_folders([logger])
    assert logger.init_args.version == 1 and (tmp_path / "shapes" / "version_1").is_dir()
    assert reservation.created == [tmp_path / "shapes" / "version_1"] and not reservation.resumed
    assert reservation.versioned == [logger]


def test_a_failed_run_leaves_no_empty_run_folder(shapes_file, tmp_path, capsys):
    """A run that stops before training removes the folder it reserved; earlier runs' folders stay."""
    (tmp_path / "shapes" / "version_0").mkdir(parents=True)
    with pytest.raises(SystemExit):
        run(fit_args("shapes.yaml", shapes_file, tmp_path, "--model.k", "3", "--model.step_weights", "[1.0]"))
    assert [p.name for p in (tmp_path / "shapes").iterdir()] == ["version_0"]
    assert "model.step_weights has 1 entries" in capsys.readouterr().err
