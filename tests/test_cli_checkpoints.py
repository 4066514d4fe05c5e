"""`nem test` and `nem predict` with one tiny trained checkpoint: scores, figures, predictions, and refused
checkpoints and options."""

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import (
    CONFIGS,
    WEIGHTS,
    csv_logger,
    fails_with,
    fit_args,
    record_scoring,
    reference_test_ami,
    scored_arrays,
    test_args,
)
from nem_lightning.cli import run
from nem_lightning.module import NEMLightningModule


def _checkpoints(out, name):
    return sorted((Path(out) / name).glob("version_*/checkpoints/*.ckpt"))


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


def test_test_reads_a_file_from_another_tool(trained, foreign_shapes_file, monkeypatch):
    """A static file in the official layout written by plain h5py scores without conversion."""
    _, ckpt = trained
    scored = record_scoring(monkeypatch)
    cli = run(test_args(foreign_shapes_file, ckpt))
    with h5py.File(foreign_shapes_file, "r") as f:
        groups = f["test"]["groups"][()]  # (1, N, H, W, 1)
    assert np.array_equal(scored_arrays(scored)[1], groups[:, :, :, :, 0].transpose(1, 0, 2, 3))
    expected = reference_test_ami(scored)
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


def test_fit_draws_grouping_figures_in_the_run_directory(trained):
    """The shipped configs write the overview PNG of validation samples after each validation epoch."""
    out, _ = trained
    pictures = sorted(p.name for p in (out / "shapes" / "version_0" / "figures").glob("*.png"))
    # 4 batches per epoch (configs/debug.yaml): validations after global steps 4 and 8
    assert "epoch000_step0000004_sample2.png" in pictures and "epoch001_step0000008_sample0.png" in pictures


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
    figures = tmp_path / "shapes" / "version_0" / "figures"
    assert (figures / "test_ami_per_step.png").is_file()
    # the plotted numbers: one row per EM step, and the last step's is the logged test/ami_last
    rows = (figures / "test_ami_per_step.csv").read_text().splitlines()
    steps = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["steps"]
    assert rows[0] == "step,ami" and [r.split(",")[0] for r in rows[1:]] == [str(t) for t in range(1, steps + 1)]
    with open(tmp_path / "shapes" / "version_0" / "metrics.csv") as f:
        ami_last = next(float(r["test/ami_last"]) for r in csv.DictReader(f) if r.get("test/ami_last"))
    assert float(rows[-1].split(",")[1]) == pytest.approx(ami_last, abs=1e-6)


def test_test_draws_the_scored_samples_with_eval_k(trained, shapes_file, tmp_path):
    """`nem test` draws test samples 0-2 as scored: with --eval.k 2 each figure has two ψ rows fewer than at K = 4."""
    from PIL import Image

    _, ckpt = trained
    heights = {}
    for k in (None, 2):
        out = tmp_path / f"k{k}"
        extra = [] if k is None else ["--eval.k", str(k)]
        run(
            ["test", "--config", str(CONFIGS / "shapes.yaml"), "--data.path", shapes_file, "--ckpt_path", ckpt]
            + csv_logger(out, "shapes.yaml")
            + ["--trainer.enable_progress_bar", "false", *extra]
        )
        figures = out / "shapes" / "version_0" / "figures"
        names = sorted(p.name for p in figures.glob("test_test_sample*.png"))
        assert names == [f"test_test_sample{i}.png" for i in range(3)]
        with Image.open(figures / "test_test_sample0.png") as image:
            heights[k] = image.size[1]
    scale = round(64 / 28)
    assert heights[None] - heights[2] == 2 * (28 * scale + 3)  # two tile rows of 28 px upscaled, each with its gap


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


def test_eval_noise_scores_on_clean_or_other_noise_and_a_stated_model_noise_warns(trained, shapes_file, capsys):
    """--eval.noise none and --eval.noise_prob 0 score the clean input, unlike the checkpoint's bitflip 0.1;
    a --model.noise that the checkpoint overrides warns and names --eval.noise."""
    _, ckpt = trained

    def scored(*extra):
        """The options the test ran with, its metrics, and whether the model's input was the clean image."""
        cli = run(test_args(shapes_file, ckpt, *extra))
        batch = cli.datamodule.batch("test", list(range(8)))
        shown = cli.model.groupings(batch, "test")
        clean = torch.equal(shown["inputs"][:, 0], batch["features"][:, 0])
        return cli.model.hparams, float(cli.trainer.callback_metrics["test/upper_bound"]), clean

    hp, noisy_bound, clean = scored()
    assert (hp.noise, hp.noise_prob, clean) == ("bitflip", 0.1, False)
    hp, clean_bound, clean = scored("--eval.noise", "none")
    assert (hp.noise, clean) == ("none", True) and clean_bound != pytest.approx(noisy_bound, rel=1e-3)
    hp, _, clean = scored("--eval.noise_prob", "0")
    assert (hp.noise, hp.noise_prob, clean) == ("bitflip", 0.0, True)
    with pytest.warns(UserWarning, match=r"trained with model.noise=bitflip .* pass --eval.noise none"):
        hp, bound, _ = scored("--model.noise", "none")
    assert hp.noise == "bitflip" and bound == noisy_bound
    err = fails_with(capsys, test_args(shapes_file, ckpt, "--eval.noise_prob", "1.5"))
    assert err == "error: --eval.noise_prob must lie in [0, 1], got 1.5"


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
