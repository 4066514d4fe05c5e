"""Data-parallel runs with 2 CPU processes (gloo), launched the way a user would: the `nem` script."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CONFIGS, WEIGHTS, csv_logger, fit_args

NEM = str(Path(sys.executable).with_name("nem"))

pytestmark = pytest.mark.slow  # several processes each: run by make test, left out of make quick


def _run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [NEM, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _last_metrics(folder):
    rows = list(csv.DictReader(open(next(Path(folder).glob("**/metrics.csv")))))
    return {k: float(v) for row in rows for k, v in row.items() if v}


@pytest.fixture(scope="module")
def ddp_fit(shapes_file, tmp_path_factory):
    """A 2-process DDP fit of 2 epochs x 2 batches per process on the tiny shapes file."""
    out = tmp_path_factory.mktemp("ddp")
    _run(
        fit_args(
            "shapes.yaml",
            shapes_file,
            out,
            "--config",
            str(CONFIGS / "trainer" / "ddp.yaml"),
            "--trainer.accelerator",
            "cpu",
            "--trainer.limit_train_batches",
            "2",
            batch_size=8,
        ),
        out,
    )
    return out


def test_ddp_fit_trains_and_checkpoints(ddp_fit):
    """Two processes train (global step 4 after 2 epochs of 2 batches) and write last.ckpt once."""
    import torch

    last = next(ddp_fit.glob("shapes/version_0/checkpoints/last.ckpt"))
    assert torch.load(last, weights_only=False)["global_step"] == 4


def test_ddp_test_scores_and_losses_equal_one_process(shapes_file, tmp_path):
    """13 images on 2 processes (7 + 6, batch 4): each image scored once, and scores *and losses* as 1 process.

    Losses are means over samples reduced as sums and counts, so the uneven split weighs no process more. Scored
    with the shipped, trained weights, whose γ decides (an untrained model's near-ties follow float rounding).
    """
    common = [
        "test",
        "--config",
        str(CONFIGS / "shapes.yaml"),
        "--data.path",
        shapes_file,
        "--data.batch_size",
        "4",
        "--data.test_size",
        "13",
        "--ckpt_path",
        str(WEIGHTS / "shapes.ckpt"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    _run(
        [*common, "--config", str(CONFIGS / "trainer" / "ddp.yaml"), *csv_logger(tmp_path / "two", "shapes")], tmp_path
    )
    _run([*common, *csv_logger(tmp_path / "one", "shapes")], tmp_path)
    two, one = _last_metrics(tmp_path / "two"), _last_metrics(tmp_path / "one")
    assert two["test/images"] == one["test/images"] == 13
    for name in ("test/ami", "test/ari", "test/confidence"):
        assert abs(two[name] - one[name]) < 1e-6, name
    for name in ("test/loss", "test/intra", "test/inter", "test/upper_bound"):
        assert two[name] == pytest.approx(one[name], rel=1e-5), name


def test_two_nodes_under_torchrun(shapes_file, tmp_path):
    """Two torchrun 'nodes' on this machine (1 process each, --trainer.num_nodes 2) train and checkpoint."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    args = [
        "fit",
        "--config",
        str(CONFIGS / "shapes.yaml"),
        "--config",
        str(CONFIGS / "debug.yaml"),
        "--data.path",
        shapes_file,
        "--data.batch_size",
        "8",
        "--model.steps",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "1",
        "--trainer.num_nodes",
        "2",
        *csv_logger(tmp_path, "shapes.yaml"),
        "--trainer.enable_progress_bar",
        "false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    nodes = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                NEM,
                *args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-2000:] + outputs[1][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in "".join(outputs)
    assert (tmp_path / "shapes" / "version_0" / "checkpoints" / "last.ckpt").is_file()
