"""Callbacks of the training run."""

from __future__ import annotations

import os
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException


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


class ElapsedTime(Callback):
    """Log the wall-clock minutes since ``fit`` started in this process, at each validation.

    Gives the score-over-time curve (``val/ami`` against ``time/minutes``) in any logger.
    """

    def __init__(self) -> None:
        self._start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None and not trainer.sanity_checking:
            pl_module.log("time/minutes", (time.monotonic() - self._start) / 60.0)
