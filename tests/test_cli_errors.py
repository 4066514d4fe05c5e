"""Faults a user meets on the command line, each one readable line naming the option or file, nothing left behind."""

import warnings
from types import SimpleNamespace

import pytest

from helpers import CONFIGS, WEIGHTS, csv_logger, fails_with, fit_args
from nem_lightning.callbacks import ElapsedTime
from nem_lightning.cli import run
from nem_lightning.generators import generate_dataset


def _shapes(*extra):
    return ["fit", "--config", str(CONFIGS / "shapes.yaml"), *extra]


@pytest.mark.parametrize(
    "weights, expected",
    [
        ("flying_shapes.ckpt", "architecture: config fc, checkpoint flying_shapes"),
        ("shapes_nem.ckpt", "m_step: config rnn_em, checkpoint n_em"),
    ],
)
def test_another_network_is_refused_even_where_the_config_states_defaults(weights, expected, shapes_file, capsys):
    """configs/shapes.yaml states only default architecture options, and still refuses a flying or N-EM network."""
    args = ["test", "--config", str(CONFIGS / "shapes.yaml"), "--data.path", shapes_file]
    err = fails_with(capsys, [*args, "--ckpt_path", str(WEIGHTS / weights), "--trainer.logger", "false"])
    assert expected in err and "use the config it was trained with" in err


def test_resuming_from_a_weights_only_file_points_at_weights_from(shapes_file, capsys):
    err = fails_with(capsys, _shapes("--data.path", shapes_file, "--ckpt_path", str(WEIGHTS / "shapes.ckpt")))
    assert "holds weights only" in err and f"--weights_from {WEIGHTS / 'shapes.ckpt'}" in err


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model:\n  k: 3\n  steps: [a: b\n")
    err = fails_with(capsys, ["fit", "--config", str(tmp_path / "bad.yaml")])
    assert f"--config '{tmp_path / 'bad.yaml'}' is not valid YAML" in err and "line 3, column 10" in err


@pytest.mark.parametrize("content, expected", [(None, "does not exist"), ("- a list\n", "must hold a mapping")])
def test_a_missing_or_shapeless_config_file_is_named(content, expected, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    assert expected in fails_with(capsys, ["fit", "--config", str(path)])


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model.kk", "3"], "error: unknown option --model.kk (did you mean --model.k?)"),
        (["--data.batchsize", "3"], "error: unknown option --data.batchsize (did you mean --data.batch_size?)"),
        (["--model.k", "three"], "error: --model.k: expected a value of type int, got 'three'"),
        (["--model.noise", "bitflp"], "error: --model.noise: expected one of 'bitflip', 'masked_uniform', 'none'"),
    ],
)
def test_option_errors_are_one_line_naming_the_option(extra, expected, capsys):
    """No 70-line usage block: the option, what was expected and a close match for a misspelling."""
    err = fails_with(capsys, _shapes(*extra))
    assert err.startswith(expected) and err.endswith("see nem fit --help"), err


def test_a_misspelt_key_in_a_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "kk.yaml").write_text("model:\n  kk: 3\n")
    err = fails_with(capsys, _shapes("--config", str(tmp_path / "kk.yaml")))
    assert "nem fit has no option model.kk" in err and "did you mean --model.k?" in err


def test_help_still_prints_the_usage(capsys):
    from nem_lightning.cli import run

    with pytest.raises(SystemExit) as info:
        run(["fit", "--help"])
    assert info.value.code == 0 and "--model.k" in capsys.readouterr().out


@pytest.fixture(scope="module")
def short_sequences(tmp_path_factory):
    """Flying shapes with 2 frames per sequence."""
    path = tmp_path_factory.mktemp("short") / "two_frames.h5"
    return str(generate_dataset("flying_shapes_3", path, sizes=(8, 8, 8), frames=2, progress=False))


def test_too_few_frames_for_training_names_the_file_and_model_steps(short_sequences, tmp_path, capsys):
    args = fit_args("flying_shapes.yaml", short_sequences, tmp_path, steps=None, workers=0)
    err = fails_with(capsys, args)
    assert err == (
        f"error: {short_sequences}: the training sequences have 2 frames, but model.steps=20 needs at least 21"
    )


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_failed_scoring_runs_leave_no_run_folder(subcommand, short_sequences, tmp_path, capsys):
    """A `nem test`/`nem predict` that fails (here: too few frames) removes the version folder it reserved."""
    (tmp_path / "flying_shapes" / "version_0").mkdir(parents=True)  # an earlier run's folder stays
    args = [subcommand, "--config", str(CONFIGS / "flying_shapes.yaml"), "--data.path", short_sequences]
    args += ["--ckpt_path", str(WEIGHTS / "flying_shapes.ckpt"), *csv_logger(tmp_path, "flying_shapes.yaml")]
    err = fails_with(capsys, [*args, "--output", str(tmp_path / "p.h5")] if subcommand == "predict" else args)
    assert "the checkpoint's model.steps=20 needs at least 21; evaluate fewer steps with --eval.steps" in err
    assert [p.name for p in (tmp_path / "flying_shapes").iterdir()] == ["version_0"]
    assert not (tmp_path / "p.h5").exists()


def test_elapsed_minutes_go_on_from_the_checkpoint():
    """time/minutes of a resumed run starts from the minutes its checkpoint saved, not from 0."""
    clock = ElapsedTime()
    clock.load_state_dict({"minutes": 12.5})
    clock.on_fit_start(SimpleNamespace(), SimpleNamespace())
    assert 12.5 <= clock.minutes() < 12.6
    assert 12.5 <= clock.state_dict()["minutes"] < 12.6


@pytest.mark.parametrize("native, warned", [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_native_bf16_warns(native, warned, monkeypatch):
    """Emulated bf16 is many times slower than float32: the run says so and names the option that avoids it."""
    import torch
    from pytorch_lightning.accelerators import CPUAccelerator

    from nem_lightning.cli import warn_slow_bf16

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    trainer = SimpleNamespace(precision="bf16-mixed", accelerator=CPUAccelerator())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_slow_bf16(trainer)
        warn_slow_bf16(SimpleNamespace(precision="32-true", accelerator=CPUAccelerator()))
    messages = [str(w.message) for w in caught]
    if warned:
        assert (
            len(messages) == 1 and "without native bf16" in messages[0] and "--trainer.precision 32-true" in messages[0]
        )
    else:
        assert messages == []


def test_checkpointing_switched_off_trains_and_writes_no_checkpoint(shapes_file, tmp_path):
    """--trainer.enable_checkpointing false drops the shared config's checkpoint callbacks instead of failing."""
    cli = run(fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.enable_checkpointing", "false", workers=0))
    assert cli.trainer.global_step > 0 and cli.trainer.checkpoint_callback is None
    assert not list(tmp_path.rglob("*.ckpt"))


def test_an_impossible_trainer_option_is_one_line(shapes_file, tmp_path, capsys):
    err = fails_with(capsys, fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.fast_dev_run", "-1"))
    assert err.startswith("error: --trainer: fast_dev_run=-1 is not a valid configuration")
