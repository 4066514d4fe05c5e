"""The `nem` command's help, printed configs, and one-line refusals of impossible options and bad data."""

import numpy as np
import pytest
import yaml

from helpers import CONFIGS, fails_with, fit_args, random_static, write_official_layout
from nem_lightning.cli import run


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
