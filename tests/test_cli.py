"""The `nem` command end to end, in process: fit, resume, test, refusals, configs and determinism."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from helpers import (
    CONFIGS,
    WEIGHTS,
    csv_logger,
    fails_with,
    fit_args,
    random_static,
    reference_test_ami,
    test_args,
    write_official_layout,
)
from nem_lightning.cli import run
from nem_lightning.module import NEMLightningModule


def _checkpoints(out, name):
    return sorted((Path(out) / name).glob("version_*/checkpoints/*.ckpt"))


class StopAt(Callback):
    """Interrupts training at a given global step, like Ctrl-C or SIGTERM would."""

    def __init__(self, step: int, how: str = "keyboard") -> None:
        self.step, self.how = step, how

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.how == "keyboard":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def trained(shapes_file, tmp_path_factory):
    """One tiny RNN-EM fit; returns its output folder and its last checkpoint."""
    out = tmp_path_factory.mktemp("runs")
    run(fit_args("shapes.yaml", shapes_file, out))
    names = [p.name for p in _checkpoints(out, "shapes")]
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names)
    last = next(p for p in _checkpoints(out, "shapes") if p.name == "last.ckpt")
    import torch

    assert torch.load(last, weights_only=False)["epoch"] == 1  # the final epoch, improved or not
    return out, str(last)


def test_help_lists_the_four_subcommands(capsys):
    """`nem --help` names fit, validate, test and predict."""
    with pytest.raises(SystemExit) as info:
        run(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(cmd in text for cmd in ("fit", "validate", "test", "predict"))


def test_print_config_is_complete_and_reproduces_the_run(capsys, tmp_path):
    """--print_config prints every option; feeding it back gives the same config."""
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(CONFIGS / "shapes.yaml"), "--model.k", "5", "--print_config"])
    text = capsys.readouterr().out
    config = yaml.safe_load(text)
    assert config["model"]["k"] == 5 and config["model"]["steps"] == 15 and config["data"]["val_size"] == 1000
    assert config["seed_everything"] == 0 and "trainer" in config
    (tmp_path / "printed.yaml").write_text(text)
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == config


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_scoring_without_a_checkpoint_is_refused(subcommand, shapes_file, capsys):
    """Without an existing --ckpt_path the command exits 2 with one clear line."""
    for extra in ([], ["--ckpt_path", "missing.ckpt"]):
        with pytest.raises(SystemExit) as info:
            run([subcommand, "--config", str(CONFIGS / "shapes.yaml"), "--data.path", shapes_file, *extra])
        assert info.value.code == 2
        assert "needs --ckpt_path naming an existing checkpoint file" in capsys.readouterr().err


def test_test_prints_ami_ari_and_confidence_and_is_deterministic(trained, shapes_file, capsys):
    """`nem test --ckpt_path` reports test AMI, last-step ARI and confidence; the same seed repeats them."""
    out, ckpt = trained
    args = test_args(shapes_file, ckpt)
    first = run(args).trainer.callback_metrics
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("test/ami", "test/ari_last", "test/confidence"))
    assert 0.0 <= first["test/confidence"] <= 1.0 and -1.0 <= first["test/ami"] <= 1.0
    second = run(args).trainer.callback_metrics
    assert {k: float(v) for k, v in first.items()} == {k: float(v) for k, v in second.items()}


def test_test_reads_a_file_from_another_tool(trained, foreign_shapes_file):
    """A static file in the official layout written by plain h5py scores without conversion."""
    _, ckpt = trained
    cli = run(test_args(foreign_shapes_file, ckpt))
    expected = reference_test_ami(cli.model, foreign_shapes_file)
    assert float(cli.trainer.callback_metrics["test/ami"]) == pytest.approx(expected, abs=1e-6)
    assert cli.model.test_scores.num_labels is None  # no `objects` attribute: the bound is read per batch


def test_generated_files_give_the_metrics_a_static_label_bound(trained, shapes_file):
    """Our files record their objects, so scoring knows labels lie in 0..3 and needs no per-batch sync."""
    _, ckpt = trained
    cli = run(test_args(shapes_file, ckpt))
    assert cli.model.test_scores.num_labels == 4 and cli.model.val_scores.num_labels == 4
    assert torch.isfinite(cli.trainer.callback_metrics["test/ami"])


def test_test_on_a_malformed_file_fails_with_one_line(trained, tmp_path, capsys):
    """A malformed data file gives exit code 2 and a message naming the file."""
    _, ckpt = trained
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(SystemExit) as info:
        run(["test", "--config", str(CONFIGS / "shapes.yaml"), "--data.path", str(bad), "--ckpt_path", ckpt])
    assert info.value.code == 2
    assert f"error: {bad}: not a readable HDF5 file" in capsys.readouterr().err


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
    stop = f'{{"class_path": "test_cli.StopAt", "init_args": {{"step": 2, "how": "{how}"}}}}'
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


def test_impossible_config_is_one_line(shapes_file, capsys):
    """N-EM with Gaussian pixels is refused naming the options."""
    with pytest.raises(SystemExit) as info:
        run(
            [
                "fit",
                "--config",
                str(CONFIGS / "shapes.yaml"),
                "--model.m_step",
                "n_em",
                "--model.distribution",
                "gaussian",
                "--data.path",
                shapes_file,
            ]
        )
    assert info.value.code == 2
    assert "model.m_step=n_em" in capsys.readouterr().err


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


def test_fit_draws_grouping_figures_in_the_run_directory(trained):
    """The shipped configs write the overview PNG of validation samples after each validation epoch."""
    out, _ = trained
    pictures = sorted(p.name for p in (out / "shapes" / "version_0" / "figures").glob("*.png"))
    # 4 batches per epoch (configs/debug.yaml): validations after global steps 4 and 8
    assert "epoch000_step0000004_sample2.png" in pictures and "epoch001_step0000008_sample0.png" in pictures


def test_validations_within_one_epoch_keep_their_own_figures(shapes_file, tmp_path):
    """With --trainer.val_check_interval each validation's figures are named by step, so none overwrites another."""
    run(
        fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.val_check_interval", "2", "--trainer.max_epochs", "1")
    )
    pictures = sorted(p.name for p in (tmp_path / "shapes" / "version_0" / "figures").glob("*_sample0.png"))
    assert pictures == ["epoch000_step0000002_sample0.png", "epoch000_step0000004_sample0.png"]


def test_predict_writes_one_hdf5_file_with_scores(trained, shapes_file, tmp_path):
    """`nem predict` writes γ of every step, predictions, masks and per-sample AMI that matches the metric."""
    import h5py
    import numpy as np
    import torch

    from nem_lightning.metrics import adjusted_mutual_info

    _, ckpt = trained
    output = tmp_path / "out" / "pred.h5"
    run(
        [
            "predict",
            "--config",
            str(CONFIGS / "shapes.yaml"),
            "--data.path",
            shapes_file,
            "--ckpt_path",
            ckpt,
            "--output",
            str(output),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    with h5py.File(output) as f:
        assert f["gamma"].shape == (48, 3, 4, 28, 28) and f["pred"].shape == (48, 3, 4, 1, 28, 28)
        assert f["mask"].shape == (48, 3, 28, 28) and f["index"][:].tolist() == list(range(48))
        gamma, groups, ami = f["gamma"][:, -1], f["groups"][:, -1], f["ami"][:]
        assert f.attrs["source"] == shapes_file
    expected, valid = adjusted_mutual_info(torch.from_numpy(gamma), torch.from_numpy(groups))
    np.testing.assert_allclose(ami[valid.numpy()], expected[valid].numpy(), atol=1e-6)
    assert not list(output.parent.glob(".*tmp"))


def test_test_plots_ami_per_step(trained, shapes_file, tmp_path):
    """After `nem test` the run's figures folder holds the AMI-per-step plot."""
    _, ckpt = trained
    run(
        [
            "test",
            "--config",
            str(CONFIGS / "shapes.yaml"),
            "--data.path",
            shapes_file,
            "--ckpt_path",
            ckpt,
            *csv_logger(tmp_path, "shapes.yaml"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert (tmp_path / "shapes" / "version_0" / "figures" / "test_ami_per_step.png").is_file()


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
    one = '{"class_path": "test_cli.CountBatches"}'
    cli = run(fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.callbacks", one, "--trainer.max_epochs", "1"))
    counters = [c for c in cli.trainer.callbacks if isinstance(c, CountBatches)]
    assert len(counters) == 1 and counters[0].batches == 4


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_damaged_or_foreign_checkpoints_are_one_line(subcommand, trained, shapes_file, tmp_path, capsys):
    """A truncated checkpoint, a text file and a pickle without weights are each refused with the file's name."""
    _, ckpt = trained
    data = Path(ckpt).read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("hello")
    torch.save({"weights": 1}, tmp_path / "other.ckpt")
    base = [
        subcommand,
        "--config",
        str(CONFIGS / "shapes.yaml"),
        "--data.path",
        shapes_file,
        "--trainer.logger",
        "false",
    ]
    for name, expected in [
        ("trunc", "is not a readable checkpoint"),
        ("text", "is not a readable checkpoint"),
        ("other", "is not a Lightning checkpoint"),
    ]:
        err = fails_with(capsys, [*base, "--ckpt_path", str(tmp_path / f"{name}.ckpt")])
        assert f"{name}.ckpt" in err and expected in err


def test_checkpoint_of_another_architecture_is_refused_listing_the_differences(trained, shapes_file, capsys):
    """The flying-shapes config with a static fc checkpoint names architecture and hidden size, and stops."""
    _, ckpt = trained
    err = fails_with(
        capsys,
        ["test", "--config", str(CONFIGS / "flying_shapes.yaml"), "--ckpt_path", ckpt, "--data.path", shapes_file],
    )
    assert (
        "architecture: config flying_shapes, checkpoint fc" in err and "hidden_size: config 100, checkpoint 250" in err
    )


def test_other_k_in_the_config_warns_and_points_at_eval_k(trained, shapes_file):
    """A config K other than the checkpoint's is not applied silently: the warning names --eval.k."""
    _, ckpt = trained
    with pytest.warns(UserWarning, match=r"trained with model.k=4 .* pass --eval.k 3"):
        cli = run(
            [
                "test",
                "--config",
                str(CONFIGS / "shapes.yaml"),
                "--model.k",
                "3",
                "--ckpt_path",
                ckpt,
                "--data.path",
                shapes_file,
                "--trainer.logger",
                "false",
            ]
        )
    assert cli.model.hparams.k == 4


def test_eval_options_and_hidden_size_are_checked_by_their_own_names(trained, shapes_file, capsys):
    _, ckpt = trained
    err = fails_with(
        capsys,
        [
            "test",
            "--config",
            str(CONFIGS / "shapes.yaml"),
            "--ckpt_path",
            ckpt,
            "--data.path",
            shapes_file,
            "--eval.k",
            "0",
        ],
    )
    assert err == "error: --eval.k must be at least 1, got 0"
    err = fails_with(
        capsys,
        ["fit", "--config", str(CONFIGS / "shapes.yaml"), "--data.path", shapes_file, "--model.hidden_size", "0"],
    )
    assert "model.hidden_size must be at least 1, got 0" in err


def test_predict_into_an_unwritable_place_fails_before_any_compute(trained, shapes_file, tmp_path, capsys, monkeypatch):
    """An output under a file, or in a folder that refuses writes, is refused before the first prediction."""
    _, ckpt = trained
    monkeypatch.setattr(NEMLightningModule, "predict_step", lambda *a: pytest.fail("predicted before refusing"))
    (tmp_path / "file").write_text("x")
    args = ["predict", "--config", str(CONFIGS / "shapes.yaml"), "--ckpt_path", ckpt, "--data.path", shapes_file]
    err = fails_with(capsys, [*args, "--output", str(tmp_path / "file" / "sub" / "p.h5")])
    assert err.startswith("error: --output") and "is a file, not a folder" in err

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("nem_lightning.prediction.tempfile.TemporaryFile", refuse)  # as a read-only folder would
    err = fails_with(capsys, [*args, "--output", str(tmp_path / "p.h5")])
    assert "is not writable (Permission denied)" in err


def test_a_directory_as_data_path_is_named_as_such(tmp_path, capsys):
    err = fails_with(capsys, ["fit", "--config", str(CONFIGS / "shapes.yaml"), "--data.path", str(tmp_path)])
    assert "is a directory; expected an HDF5 file" in err


def test_data_errors_inside_loader_workers_are_one_line(tmp_path, capsys):
    """NaN found by a DataLoader worker is reported as the one-line DataError, without the worker's traceback."""
    bad_features, groups = random_static(32, 5)
    bad_features[0, 3, 0, 0, 0] = float("nan")
    path = write_official_layout(
        tmp_path / "nan.h5",
        {"training": random_static(32, 1), "validation": (bad_features, groups), "test": random_static(8, 2)},
        dtype=np.float32,
    )
    err = fails_with(
        capsys, fit_args("shapes.yaml", path, tmp_path, "--data.num_workers", "1", "--data.in_memory", "false")
    )
    assert "validation/features has NaN" in err and "nan.h5" in err


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


def test_test_scores_do_not_depend_on_batch_size(shapes_file):
    """Evaluation draws each sample's noise from its own stream: batch 5 and batch 48 score alike, twice.

    Scored with the shipped, trained weights: an untrained model's near-uniform γ has ties that float rounding,
    which differs between batch sizes on some CPUs, would break either way.
    """
    scores = []
    for batch in ("5", "48", "5"):
        torch.manual_seed(int(batch))  # the global stream must not matter either
        cli = run(test_args(shapes_file, WEIGHTS / "shapes.ckpt", "--data.batch_size", batch))
        scores.append({k: float(v) for k, v in cli.trainer.callback_metrics.items()})
    assert scores[0]["test/confidence"] > 0.9  # γ decides: the argmax is not a near-tie
    for other in scores[1:]:
        for name in ("test/ami", "test/ari", "test/confidence"):
            assert other[name] == pytest.approx(scores[0][name], abs=1e-6), name
        for name in ("test/loss", "test/intra", "test/inter", "test/upper_bound"):  # float32 sums in other orders
            assert other[name] == pytest.approx(scores[0][name], rel=1e-5), name
