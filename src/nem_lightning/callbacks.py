"""Callbacks of the training run: checkpoint on interrupt, resume state, carried optimizer state, elapsed time,
grouping figures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nem_lightning import figures
from nem_lightning.errors import ConfigError
from nem_lightning.files import atomic_path
from nem_lightning.metrics import adjusted_mutual_info


class CheckpointOnInterrupt(Callback):
    """Write ``last.ckpt`` when ``fit`` is interrupted by Ctrl-C or SIGTERM, so the run can resume.

    Lightning's own ``OnExceptionCheckpoint`` deletes its file at the end of every clean run, which
    would delete ``last.ckpt`` too; this one only ever writes. Resume with ``--ckpt_path <last.ckpt>``.
    """

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.state.fn != "fit":
            return
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            return
        path = os.path.join(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path)
        pl.utilities.rank_zero_info(f"Interrupted: saved {path}; resume with --ckpt_path {path}")


class ResumeState(Callback):
    """Save what an exact resume needs beyond Lightning's own state: the random streams and the W&B run id.

    It also flushes the loggers whenever a checkpoint is written.

    Training draws its noise and initial γ from the global torch streams (CPU, and CUDA when used); restoring
    them with the weights, optimizer and data order (``ResumableLoader``) makes a resumed run continue exactly
    as the interrupted one would have. Under DDP every process starts from the same seed and draws the same
    amounts, so the first process's streams are every process's. The W&B run id lets ``nem fit --ckpt_path``
    continue the same W&B run (``wandb_run_id`` below). ``nem fit`` adds this callback itself.
    """

    KEY = "nem_resume"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:  # metrics logged so far reach the disk with the checkpoint (CSV: every
            logger.save()  # 100 steps otherwise), so a killed run loses none of the rows its checkpoint covers
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        wandb_ids = [logger.version for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_ids and wandb_ids[0]:
            state["wandb_run_id"] = str(wandb_ids[0])
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get(self.KEY) or {}
        if "torch" in state:
            torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and pl_module.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"].cpu(), pl_module.device)


def wandb_run_id(checkpoint: dict) -> str | None:
    """The W&B run id a checkpoint written with ``ResumeState`` belongs to, if any."""
    return (checkpoint.get(ResumeState.KEY) or {}).get("wandb_run_id")


class CarryOptimizerState(Callback):
    """Start ``fit``'s optimizer from another run's state (``--carry_optimizer``), keeping this run's learning rate.

    The original's curriculum restores every variable of the previous stage, Adam's moment estimates and step
    counts included; a fresh Adam instead takes steps of about the learning rate in every weight at first.
    """

    def __init__(self, state: dict) -> None:
        self.state = state

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        rates = [group["lr"] for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(self.state)  # copies the tensors onto the parameters' device and dtype
        except ValueError as err:
            message = f"--carry_optimizer: the checkpoint's optimizer does not fit this model ({err})"
            raise ConfigError(message) from None
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr
        self.state = {}  # the copy in the optimizer is the one in use


class ElapsedTime(Callback):
    """Log the wall-clock minutes of training, at each validation; a resumed run goes on from its checkpoint's.

    Gives the score-over-time curve (``val/ami`` against ``time/minutes``) in any logger. The minutes before the
    interruption are saved in every checkpoint; the time between the interruption and the resume is not counted.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._before = 0.0  # minutes of the run before it was resumed

    def minutes(self) -> float:
        """Minutes of training so far, the resumed run's earlier part included."""
        return self._before + (0.0 if self._start is None else (time.monotonic() - self._start) / 60.0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def state_dict(self) -> dict[str, float]:
        return {"minutes": self.minutes()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._before = float(state_dict.get("minutes", 0.0))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:
            pl_module.log("time/minutes", self.minutes(), sync_dist=True)


class GroupingFigures(Callback):
    """Draw the paper's overview figure for chosen validation samples, save it and log it.

    Every ``every_n_epochs`` validation epochs, the model is unrolled on the given validation samples and,
    for each, a PNG with the input, the corrupted input, γ per step (colour-coded by component), each
    component's prediction and the reconstruction, titled with the sample's AMI, is written to
    ``<run dir>/figures/`` (runs without a logger draw nothing) and sent to every logger that takes images
    (W&B, TensorBoard). For sequences an animated GIF is written too. After ``nem test`` the same samples of
    the tested split are drawn as they were scored (``--eval.k``, ``--eval.steps`` and the rest applied), as
    ``test_<split>_sample<i>.png``, and the AMI per EM step is saved and logged as a plot.

    Args:
        samples: indices of the validation samples to draw, and of the test samples after ``nem test``.
        every_n_epochs: draw after every n-th validation epoch.
        gif: also write an animated GIF for sequence data.
    """

    def __init__(self, samples: list[int] = [0, 1, 2], every_n_epochs: int = 1, gif: bool = True) -> None:  # noqa: B006
        self.samples, self.every_n_epochs, self.gif = list(samples), every_n_epochs, gif

    def _folder(self, trainer: pl.Trainer) -> Path:
        # trainer.log_dir is a collective under DDP: every process must ask, not only rank 0.
        return Path(trainer.log_dir or trainer.default_root_dir) / "figures"

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers or trainer.sanity_checking or trainer.datamodule is None:
            return  # without a logger there is no run directory to draw into
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        self._draw(trainer, pl_module, "validation", f"epoch{epoch:03d}_step{step:07d}", f"epoch {epoch}, step {step}")

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str, stem: str, title: str) -> None:
        """Overview figure (and GIF) of each chosen sample of ``split``, unrolled as that split is scored."""
        folder = self._folder(trainer)
        if not trainer.is_global_zero:
            return
        size = len(trainer.datamodule.dataset(split))
        samples = [i for i in self.samples if 0 <= i < size]
        if not samples:
            return
        stage = "val" if split == "validation" else "test"
        batch = move_data_to_device(trainer.datamodule.batch(split, samples), pl_module.device)
        with torch.no_grad():
            shown = {k: v.cpu() for k, v in pl_module.groupings(batch, stage).items()}
        gammas, preds = shown["gammas"].float(), shown["preds"][:, :, :, 0].float()  # (B, T, K, H, W), 1st channel
        targets, inputs = shown["targets"][:, :, 0].float(), shown["inputs"][:, :, 0].float()  # (B, T, H, W)
        groups = shown.get("groups")
        ami = None
        if groups is not None:
            ami, valid = adjusted_mutual_info(gammas[:, -1], groups[:, -1])
            ami = [float(a) if v else None for a, v in zip(ami, valid)]
        images = []
        for j, index in enumerate(samples):
            picture = figures.grouping_figure(
                targets[j].numpy(),
                inputs[j].numpy(),
                gammas[j].numpy(),
                preds[j].numpy(),
                None if groups is None else groups[j].numpy(),
                None if ami is None else ami[j],
                title=f"{title}, sample {index}",
            )
            figures.save_png(picture, folder / f"{stem}_sample{index}.png")
            images.append(picture)
            if self.gif and batch["features"].shape[1] > 1:
                figures.sequence_gif(
                    targets[j].numpy(),
                    gammas[j].numpy(),
                    preds[j].numpy(),
                    folder / f"{stem}_sample{index}.gif",
                )
        log_images(trainer, f"{stage}/groupings", images, [f"sample {i}" for i in samples])

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_test_end, not on_test_epoch_end: callbacks' epoch-end hooks run before the module computes scores
        if not trainer.loggers or trainer.datamodule is None:
            return
        split, k = trainer.datamodule.hparams.test_split, pl_module.hparams.k
        self._draw(trainer, pl_module, split, f"test_{split}", f"{split} split, K = {k}")
        curve = pl_module.test_ami_per_step
        if curve is None:
            return
        folder = self._folder(trainer)
        if not trainer.is_global_zero:
            return
        values = [float(v) for v in curve]
        picture = figures.ami_per_step_figure(values, title="test AMI per EM step")
        figures.save_png(picture, folder / "test_ami_per_step.png")
        with atomic_path(folder / "test_ami_per_step.csv") as tmp:  # the plotted numbers, step 1 first
            tmp.write_text("step,ami\n" + "".join(f"{t},{v:.6f}\n" for t, v in enumerate(values, 1)))
        log_images(trainer, "test/ami_per_step", [picture], ["AMI per step"])


def log_images(trainer: pl.Trainer, key: str, images: list, captions: list[str]) -> None:
    """Send RGB arrays (H, W, 3) to each logger that can show images."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=images, caption=captions, step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            for image, caption in zip(images, captions):
                logger.experiment.add_image(f"{key}/{caption}", image, trainer.global_step, dataformats="HWC")


class EpochLog(Callback):
    """One plain line per training epoch (for logs and pipes, where a live progress bar is noise)."""

    KEYS = ("train/loss", "val/loss", "val/ami", "val/ari", "val/confidence", "time/minutes")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        parts = [f"{key} {float(metrics[key]):.4g}" for key in self.KEYS if key in metrics]
        pl.utilities.rank_zero_info(
            f"epoch {trainer.current_epoch} | step {trainer.global_step} | " + " | ".join(parts)
        )
