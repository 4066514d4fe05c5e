"""The ``nem`` command: LightningCLI with fit/validate/test/predict, and the project's run policy.

    nem fit --config configs/shapes.yaml
    nem test --config configs/shapes.yaml --ckpt_path runs/shapes/version_0/checkpoints/last.ckpt

This is the one place that decides run policy: refusing to score untrained weights, test-time
overrides of K and the number of steps, weights-only initialisation for staged training, and turning
the project's own errors into one readable line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from nem_lightning.callbacks import EpochLog
from nem_lightning.data import GroupingDataModule
from nem_lightning.errors import ConfigError, NEMError
from nem_lightning.module import NEMLightningModule
from nem_lightning.prediction import HDF5PredictionWriter

NEEDS_CHECKPOINT = ("validate", "test", "predict")
EVAL_OVERRIDES = ("k", "steps", "score_steps")


class NEMCLI(LightningCLI):
    """LightningCLI for Neural EM."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Private Lightning hook, the only one that knows which subcommand a parser is for.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            parser.add_argument(
                "--weights_from",
                type=Optional[str],
                default=None,
                help="Start from the weights of this checkpoint only (fresh optimizer and epochs), e.g. the best "
                "checkpoint of the previous curriculum stage. Ignored when resuming with --ckpt_path.",
            )
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str,
                default="predictions.h5",
                help="HDF5 file for the predictions (γ of every step, predictions, argmax masks, per-sample "
                "AMI/ARI when the data has groups); written atomically; with several processes one file per rank.",
            )
        if subcommand != "fit":
            # --ckpt_path restores the checkpoint's model options over --config and --model.* (see
            # Lightning-AI/pytorch-lightning#21455); these apply test-time variations on purpose.
            parser.add_argument("--eval.k", type=Optional[int], default=None, help="Evaluate with this K.")
            parser.add_argument("--eval.steps", type=Optional[int], default=None, help="Evaluate with this many EM steps.")
            parser.add_argument(
                "--eval.score_steps",
                type=Optional[Literal["last", "all"]],
                default=None,
                help="Report AMI/ARI of the last step or the mean over all steps.",
            )
        return parser

    def _parse_ckpt_path(self) -> None:
        super()._parse_ckpt_path()
        if self.config.get("subcommand") in NEEDS_CHECKPOINT:
            config = self.config[self.config.subcommand]
            for name in EVAL_OVERRIDES:
                value = config.get(f"eval.{name}")
                if value is not None:
                    config[f"model.{name}"] = value

    def before_instantiate_classes(self) -> None:
        # The resolved config is saved with each training run in its own log directory. Scoring runs, and
        # runs without a logger, would write config.yaml into the working directory and collide next time.
        if self.subcommand != "fit" or self.config.fit.trainer.logger is False:
            self.save_config_callback = None
        # Lightning would score random weights and exit 0 without a checkpoint (and `--ckpt_path last`
        # in a fresh process only warns): refuse instead.
        if self.subcommand in NEEDS_CHECKPOINT:
            ckpt = self.config[self.subcommand].get("ckpt_path")
            if not ckpt or not Path(ckpt).is_file():
                got = f"got {ckpt!r}" if ckpt else "none given"
                raise NEMError(
                    f"nem {self.subcommand} needs --ckpt_path naming an existing checkpoint file ({got}); "
                    f"refusing to score untrained weights"
                )

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "predict":
            output = self.config.predict.output
            self.trainer.callbacks.append(HDF5PredictionWriter(output, source=self.datamodule.path))
        if self.subcommand in NEEDS_CHECKPOINT:
            hp = self.model.hparams
            rank_zero_info(
                f"nem {self.subcommand}: {self.config[self.subcommand].ckpt_path} on {self.datamodule.path} with "
                f"k={hp.k}, steps={hp.steps}, score_steps={hp.score_steps}, noise={hp.noise} p={hp.noise_prob}"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Rich progress bar in a terminal; one plain line per epoch when the output is a file or a pipe.
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)  # one or a list
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            if sys.stdout.isatty():
                callbacks.append(RichProgressBar())
            else:
                kwargs["enable_progress_bar"] = False
                callbacks.append(EpochLog())
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _finish_wandb(self) -> None:
        # Several runs in one process would share one W&B run until it is finished.
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()

    after_fit = after_validate = after_test = after_predict = _finish_wandb

    def before_fit(self) -> None:
        source = self.config.fit.get("weights_from")
        if source and not self.config.fit.get("ckpt_path"):
            load_weights(self.model, source)
            rank_zero_info(f"nem fit: initialised weights from {source}")


def load_weights(model: NEMLightningModule, path: str) -> None:
    """Copy the network weights of a checkpoint into ``model``; optimizer and loop state are not touched."""
    if not Path(path).is_file():
        raise ConfigError(f"--weights_from {path!r} is not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ConfigError(f"--weights_from {path!r} could not be read as a checkpoint ({err})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped weights
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ConfigError(
            f"--weights_from {path!r} does not fit this model ({first}); the architecture options must match"
        ) from None


def save_weights_only(source: str, target: str) -> None:
    """Write ``source``'s weights and model options to ``target``, without optimizer or loop state.

    The result is a third of the size and works wherever a checkpoint is read for its weights: ``nem test``,
    ``nem predict``, ``nem validate`` and ``--weights_from``. It cannot resume training. Written atomically.
    """
    try:
        full = torch.load(source, map_location="cpu", weights_only=False)
        state = {key: full[key] for key in ("state_dict", "hyper_parameters", "pytorch-lightning_version")}
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ConfigError(f"{source!r} could not be read as a training checkpoint ({err})") from None
    state.update(epoch=full.get("epoch", 0), global_step=full.get("global_step", 0), loops=None)
    partial = Path(target).with_name(f".{Path(target).name}.partial")
    torch.save(state, partial)
    os.replace(partial, target)


def wandb_never_blocks() -> None:
    """Run W&B offline unless the user chose a mode or has logged in: no login prompt, no network wait.

    An explicit ``WANDB_MODE`` (``online``, ``offline``, ``disabled``) always wins. Otherwise, without an
    API key (``WANDB_API_KEY`` or the ~/.netrc entry ``wandb login`` writes), runs log offline into their
    save_dir; upload them later with ``wandb sync``.
    """
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):  # an empty WANDB_MODE counts as unset
        return
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    os.environ["WANDB_MODE"] = "offline"


def run(args: list[str] | None = None) -> NEMCLI:
    """Run ``nem`` with these arguments and return the CLI (trainer, model, data), for use in code."""
    wandb_never_blocks()
    try:
        return NEMCLI(NEMLightningModule, GroupingDataModule, args=args)
    except NEMError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Entry point of the ``nem`` console script."""
    run()


if __name__ == "__main__":
    main()
