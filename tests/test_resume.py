"""Exact resume: an interrupted run, resumed from its checkpoint, is the run that was never interrupted.

Same batches in the same order, same random draws, same final weights, same run folder and W&B run; also after
``kill -9``, which gives the process no chance to write anything beyond the last checkpoint.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from helpers import fit_args
from nem_lightning.callbacks import ResumeState
from nem_lightning.cli import run
from nem_lightning.data import EpochShuffle, GroupingDataModule, ResumableLoader

BATCHES = []  # (global step, sample indices) of every training batch, recorded by RecordBatches


class RecordBatches(Callback):
    """Records which samples each training step sees."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        BATCHES.append((trainer.global_step, batch["index"].tolist()))


RECORD = '{"class_path": "test_resume.RecordBatches"}'
EVERY_STEP = (
    '{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", '
    '"init_args": {"filename": "step", "every_n_train_steps": 1, "enable_version_counter": false}}'
)


def _weights(cli_or_path) -> dict[str, torch.Tensor]:
    if isinstance(cli_or_path, (str, Path)):
        return torch.load(cli_or_path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v.detach().clone() for k, v in cli_or_path.model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ after resume: {differing[:5]}"


def test_epoch_shuffle_depends_on_seed_and_epoch_only_and_can_start_part_way(shapes_file):
    dataset = GroupingDataModule(shapes_file).dataset("training")
    first = EpochShuffle(dataset, 1, 0, seed=7)
    order0 = list(first)
    first.set_epoch(1)
    order1 = list(first)
    assert sorted(order0) == list(range(len(dataset))) and order0 != order1  # a new permutation per epoch
    again = EpochShuffle(dataset, 1, 0, seed=7)
    again.resume(1, 10)
    assert list(again) == order1[10:]  # a resumed epoch continues where it stopped ...
    assert list(again) == order1  # ... once: the next pass is whole
    again.resume(1, 10)
    again.set_epoch(2)
    assert len(list(again)) == len(dataset)  # and only in the epoch it was saved in
    halves = [list(EpochShuffle(dataset, 2, rank, seed=7)) for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(order0)  # two processes share the epoch without overlap


def test_the_training_loader_saves_seed_epoch_and_consumed_samples(shapes_file):
    dm = GroupingDataModule(shapes_file, batch_size=16)
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader)
    loader.progress = lambda: (3, 6)  # 3 of 6 batches done
    loader.sampler.set_epoch(2)
    state = loader.state_dict()
    assert state == {"seed": loader.sampler.seed, "epoch": 2, "consumed": 48}
    loader.progress = lambda: (6, 6)  # the epoch is over: a resumed run goes on with the next
    assert loader.state_dict() == {"seed": loader.sampler.seed, "epoch": 3, "consumed": 0}
    fresh = GroupingDataModule(shapes_file, batch_size=16).train_dataloader()
    fresh.load_state_dict(state)
    expected = EpochShuffle(dm.dataset("training"), 1, 0, seed=state["seed"])
    expected.set_epoch(2)
    resumed = [i for batch in fresh for i in batch["index"].tolist()]
    assert resumed == list(expected)[48:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop_at, workers", [(3, 0), (4, 0), (3, 1)], ids=["mid-epoch", "epoch-end", "mid-epoch-worker"]
)
def test_interrupted_and_resumed_equals_uninterrupted(stop_at, workers, shapes_file, tmp_path):
    """Fixed seed on CPU: stop after `stop_at` updates, resume from last.ckpt; batches and weights are identical."""
    BATCHES.clear()
    loader = ["--data.num_workers", str(workers), "--data.in_memory", str(workers == 0).lower()]
    whole = run(fit_args("shapes.yaml", shapes_file, tmp_path / "whole", f"--trainer.callbacks+={RECORD}", *loader))
    expected_batches, expected_weights = list(BATCHES), _weights(whole)
    assert whole.trainer.global_step == 8

    BATCHES.clear()
    stop = f'{{"class_path": "helpers.StopAt", "init_args": {{"step": {stop_at}}}}}'
    args = fit_args("shapes.yaml", shapes_file, tmp_path / "parts", f"--trainer.callbacks+={RECORD}", *loader)
    with pytest.raises(SystemExit):
        run([*args, f"--trainer.callbacks+={stop}"])
    last = tmp_path / "parts" / "shapes" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == stop_at
    resumed = run([*args, "--ckpt_path", str(last)])

    assert resumed.trainer.global_step == 8
    assert BATCHES == expected_batches  # same samples, same order, none repeated or skipped
    _assert_same_weights(_weights(resumed), expected_weights)
    # metrics.csv keeps the rows from before the interruption: every row is one the uninterrupted run logged,
    # once; missing are only what the interruption cut (the stopped update's loss, logged after the hook that
    # stopped it, and at an epoch's end the validation that a resumed run skips)
    for key in ("train/loss", "val/loss", "val/ami"):
        part, whole = _logged(tmp_path / "parts", key), _logged(tmp_path / "whole", key)
        assert len(part) == len(set(part)) and set(part) <= set(whole), key
        assert {step for step, _ in set(whole) - set(part)} <= {str(stop_at - 1), str(stop_at)}, key
    assert len(_logged(tmp_path / "parts", "train/loss")) >= 7  # of 8: rows from before the interruption stay


def _logged(out, key):
    with open(out / "shapes" / "version_0" / "metrics.csv", newline="") as file:
        return [(row["step"], row[key]) for row in csv.DictReader(file) if row.get(key)]


class Pause(Callback):
    """Slows each update down, so a test can catch the run mid-way."""

    def on_train_batch_end(self, *args) -> None:
        time.sleep(0.15)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_as_the_uninterrupted_run(shapes_file, tmp_path):
    """A process killed with SIGKILL loses only what came after its last checkpoint; the resumed run is exact."""

    def args(out):
        callbacks = [f"--trainer.callbacks+={EVERY_STEP}", '--trainer.callbacks+={"class_path": "test_resume.Pause"}']
        extra = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "6"]
        return fit_args("shapes.yaml", shapes_file, out, *callbacks, *extra)

    reference = run(args(tmp_path / "reference"))
    assert reference.trainer.global_step == 18

    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).parent)}
    code = "import sys; from nem_lightning.cli import main; sys.argv[0] = 'nem'; main()"
    log = tmp_path / "killed.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code, *args(tmp_path)], cwd=tmp_path, env=env, stderr=stderr)
        step_ckpt = tmp_path / "shapes" / "version_0" / "checkpoints" / "step.ckpt"
        deadline, seen = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = torch.load(step_ckpt, weights_only=False)["global_step"]
            except Exception:  # noqa: BLE001 - not written yet, or being replaced this instant: look again
                seen = None
            if seen is not None and 8 <= seen < 16:  # in the second epoch or later, before the end
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {log.read_text()[-2000:]}"

    saved = torch.load(step_ckpt, weights_only=False)["global_step"]
    assert 8 <= seen <= saved < 18  # the file on disk is a whole checkpoint, from mid-way through the run
    resumed = run([*args(tmp_path), "--ckpt_path", str(step_ckpt)])
    assert resumed.trainer.global_step == 18
    assert [p.name for p in (tmp_path / "shapes").iterdir()] == ["version_0"]  # the same run folder
    _assert_same_weights(_weights(resumed), _weights(reference))
    # metrics.csv: the rows the checkpoint covers were on disk (flushed with it) and stay; later ones are logged
    # again; at most the loss of the update the checkpoint was written after (logged after that hook) is missing
    part, whole = _logged(tmp_path, "train/loss"), _logged(tmp_path / "reference", "train/loss")
    assert len(part) == len(set(part)) and set(part) <= set(whole)
    assert {step for step, _ in set(whole) - set(part)} <= {str(saved - 1)}


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run(shapes_file, tmp_path, monkeypatch):
    """The checkpoint carries the W&B run id; `nem fit --ckpt_path` logs into that run again."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb = '{"class_path": "pytorch_lightning.loggers.WandbLogger", "init_args": {"save_dir": "wb", "project": "p"}}'
    stop = '{"class_path": "helpers.StopAt", "init_args": {"step": 2}}'
    args = fit_args("shapes.yaml", shapes_file, tmp_path, "--trainer.logger+=" + wandb)
    with pytest.raises(SystemExit):
        run([*args, f"--trainer.callbacks+={stop}"])
    last = tmp_path / "shapes" / "version_0" / "checkpoints" / "last.ckpt"
    first_id = torch.load(last, weights_only=False)[ResumeState.KEY]["wandb_run_id"]
    assert first_id
    resumed = run([*args, "--ckpt_path", str(last)])
    logger = next(lg for lg in resumed.trainer.loggers if isinstance(lg, WandbLogger))
    assert logger.version == first_id
    assert torch.load(last, weights_only=False)[ResumeState.KEY]["wandb_run_id"] == first_id


def test_resume_restores_the_random_streams_of_training(shapes_file, tmp_path):
    """The checkpoint holds the global torch stream as it was after the last update, and resuming restores it."""
    stop = '{"class_path": "helpers.StopAt", "init_args": {"step": 2}}'
    args = fit_args("shapes.yaml", shapes_file, tmp_path)
    with pytest.raises(SystemExit):
        run([*args, f"--trainer.callbacks+={stop}"])
    saved = torch.load(tmp_path / "shapes" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    state = saved[ResumeState.KEY]["torch"]
    torch.manual_seed(12345)  # whatever the resumed process holds ...
    callback = ResumeState()
    callback.on_load_checkpoint(None, torch.nn.Linear(1, 1), saved)
    assert torch.equal(torch.get_rng_state(), state)  # ... the checkpoint's streams replace it
