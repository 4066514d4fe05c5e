"""The ``nem`` command: LightningCLI with fit/validate/test/predict, and the project's run policy.

    nem fit --config configs/shapes.yaml
    nem test --config configs/shapes.yaml --ckpt_path runs/shapes/version_0/checkpoints/last.ckpt

This is the one place that decides run policy: refusing to score untrained weights, test-time
overrides of K and the number of steps, weights-only initialisation for staged training, and turning
the project's own errors into one readable line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from jsonargparse import Namespace
from pytorch_lightning import Trainer
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from nem_lightning.callbacks import CarryOptimizerState, EpochLog, ResumeState, wandb_run_id
from nem_lightning.checkpoints import (
    ARCHITECTURE_OPTIONS,
    check_architecture,
    check_resumable,
    default,
    load_weights,
    optimizer_state,
    read_checkpoint,
)
from nem_lightning.data import GroupingDataModule
from nem_lightning.em import Noise
from nem_lightning.errors import ConfigError, NEMError
from nem_lightning.module import NEMLightningModule
from nem_lightning.options import (
    NEMArgumentParser,
    check_config_files,
    config_files,
    expand_bases,
    stated_model_options,
)
from nem_lightning.prediction import HDF5PredictionWriter, check_writable
from nem_lightning.runs import (
    Reservation,
    continue_wandb_run,
    discard_unused,
    keep_metrics_history,
    name_loggers,
    reserve_run_folders,
    run_name,
    wandb_never_blocks,
)

NEEDS_CHECKPOINT = ("validate", "test", "predict")
EVAL_OVERRIDES = ("k", "steps", "score_steps", "noise", "noise_prob")
WARNED_OVERRIDES = ("k", "steps", "noise", "noise_prob")  # stated in a config but overridden by the checkpoint: warn
SIGTERM_EXIT = 143  # 128 + SIGTERM, what a scheduler expects from a process stopped by SIGTERM


class NEMCLI(LightningCLI):
    """LightningCLI for Neural EM.

    State the hooks share: ``_args`` (the command line, bases of config files added), ``_checkpoint`` (the
    ``--ckpt_path`` file, read once)
    and ``_reservation`` (the run folders made for this run, removed again if it fails before writing).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args: list[str] = []
        self._first_config: str | None = None
        self._checkpoint: dict[str, Any] = {}
        self._reservation = Reservation()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            discard_unused(self._reservation.created)
            raise

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Replaces Lightning's, which only warns when args and sys.argv are both given and parses.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
            return
        given = [str(a) for a in (sys.argv[1:] if args is None else args)]
        self._args = expand_bases(given)  # each config's bases are read before it
        self._first_config = next(iter(config_files(given)), None)  # the run's default name, not a base's
        check_config_files(self._args)  # a missing or broken YAML file is named, with the place of the fault
        self.config = parser.parse_args(self._args)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Private Lightning hook, the only one that knows which subcommand a parser is for.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.add_argument(
            "--base",
            type=read_already,
            default=None,
            help="In a config file: a config file (relative to it) read before it, e.g. the model block an "
            "experiment shares with others. Read when the file is; null in the saved config.yaml.",
        )
        parser.add_argument(
            "--name",
            type=Optional[str],
            default=None,
            help="Run name: loggers without a name of their own write to runs/<name>/version_N and name the W&B "
            "run so. Experiment configs set it; otherwise the first --config file's name, else 'nem'.",
        )
        if subcommand == "fit":
            parser.add_argument(
                "--weights_from",
                type=Optional[str],
                default=None,
                help="Start from the weights of this checkpoint only (fresh optimizer and epochs), e.g. the best "
                "checkpoint of the previous curriculum stage. Ignored when resuming with --ckpt_path.",
            )
            parser.add_argument(
                "--carry_optimizer",
                type=bool,
                default=False,
                help="With --weights_from (a full checkpoint): also start from its optimizer state (Adam's moments "
                "and step counts), keeping this run's learning rate, as the original's curriculum does between stages.",
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
            parser.add_argument(
                "--eval.steps", type=Optional[int], default=None, help="Evaluate with this many EM steps."
            )
            parser.add_argument(
                "--eval.score_steps",
                type=Optional[Literal["last", "all"]],
                default=None,
                help="Report AMI/ARI of the last step or the mean over all steps.",
            )
            parser.add_argument(
                "--eval.noise",
                type=Optional[Noise],
                default=None,
                help="Corrupt the input with this noise (none: score on clean input); training's by default.",
            )
            parser.add_argument(
                "--eval.noise_prob", type=Optional[float], default=None, help="Probability of the noise per pixel."
            )
        return parser

    def _parse_ckpt_path(self) -> None:
        # Lightning replaces the config's model options by the checkpoint's (Lightning-AI/pytorch-lightning#21455).
        # Read the checkpoint first, so a damaged file and a conflicting architecture each give one line.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        asked = {}
        if ckpt and Path(ckpt).is_file():
            self._checkpoint = read_checkpoint(ckpt)
            if subcommand == "fit":
                check_resumable(ckpt, self._checkpoint)
            trained = dict(self._checkpoint.get("hyper_parameters") or {})
            # Only what the config files or the command line state is compared: left unstated, the checkpoint's
            # value applies. Stated values are compared even when they equal the defaults.
            stated = stated_model_options(self._args)
            asked = {
                name: self.config[subcommand].model.get(name)
                for name in (*ARCHITECTURE_OPTIONS, *WARNED_OVERRIDES)
                if name in stated
            }
            check_architecture(ckpt, asked, trained)
        super()._parse_ckpt_path()
        if subcommand in NEEDS_CHECKPOINT:
            config = self.config[subcommand]
            for name in EVAL_OVERRIDES:
                value = config.get(f"eval.{name}")
                if name in ("k", "steps") and isinstance(value, int) and value < 1:
                    raise NEMError(f"--eval.{name} must be at least 1, got {value}")
                if name == "noise_prob" and value is not None and not 0.0 <= value <= 1.0:
                    raise NEMError(f"--eval.noise_prob must lie in [0, 1], got {value}")
                if value is not None:
                    config[f"model.{name}"] = value
            for name in WARNED_OVERRIDES:  # the config states another value than the checkpoint's, and no --eval
                used = config.model.get(name)
                if config.get(f"eval.{name}") is None and asked.get(name) not in (None, default(name), used):
                    rank_zero_warn(
                        f"the checkpoint was trained with model.{name}={used} and is evaluated so; the config's "
                        f"{name}={asked[name]} is ignored: pass --eval.{name} {asked[name]} to evaluate with it"
                    )

    def before_instantiate_classes(self) -> None:
        # The resolved config is saved with each training run in its own log directory. Scoring runs, and
        # runs without a logger, would write config.yaml into the working directory and collide next time.
        if self.subcommand != "fit" or self.config.fit.trainer.logger is False:
            self.save_config_callback = None
        config = self.config[self.subcommand]
        name_loggers(config.trainer.logger, run_name(config, self._first_config))
        # Scoring runs always get a new folder: a checkpoint's training folder keeps its own metrics.csv.
        resume_from = config.get("ckpt_path") if self.subcommand == "fit" else None
        self._reservation = reserve_run_folders(config.trainer.logger, resume_from)
        if self._reservation.resumed:
            self.save_config_kwargs["overwrite"] = True  # resumed in its own folder: config.yaml is rewritten
        if self.subcommand == "fit":
            continue_wandb_run(self.config.fit.trainer.logger, wandb_run_id(self._checkpoint))
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
        for item in self._reservation.versioned:  # the loggers have their folders; config.yaml, rerun, gets new ones
            item.init_args.version = None
        if self._reservation.resumed:
            step = int(self._checkpoint.get("global_step", 0))
            for logger in self.trainer.loggers:
                if isinstance(logger, CSVLogger):
                    keep_metrics_history(logger, step)
        warn_slow_bf16(self.trainer)
        if self.subcommand == "predict":
            output = self.config.predict.output
            check_writable(output)
            self.trainer.callbacks.append(HDF5PredictionWriter(output, source=self.datamodule.path))
        if self.subcommand in NEEDS_CHECKPOINT:
            hp = self.model.hparams
            if self.config[self.subcommand].get("eval.steps") is not None:
                self.model.steps_option = "--eval.steps"
            elif "steps" in (self._checkpoint.get("hyper_parameters") or {}):
                self.model.steps_option = "checkpoint"
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
        if self.subcommand == "fit" and not any(isinstance(c, ResumeState) for c in callbacks):
            callbacks.append(ResumeState())  # exact resume: random streams and the W&B run id in every checkpoint
        if config.get("enable_checkpointing") is False:  # the shared config's checkpoint callbacks go with it
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        kwargs["callbacks"] = callbacks
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # an impossible combination of trainer options
            raise ConfigError(f"--trainer: {str(err).strip().splitlines()[0]}") from None

    def _finish_wandb(self) -> None:
        # Several runs in one process would share one W&B run until it is finished.
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()

    after_fit = after_validate = after_test = after_predict = _finish_wandb

    def before_fit(self) -> None:
        source, carry = self.config.fit.get("weights_from"), self.config.fit.get("carry_optimizer")
        if carry and not source:
            raise ConfigError("--carry_optimizer needs --weights_from <full checkpoint> to carry the optimizer from")
        if source and not self.config.fit.get("ckpt_path"):
            ckpt = load_weights(self.model, source)
            if carry:
                self.trainer.callbacks.append(CarryOptimizerState(optimizer_state(source, ckpt)))
            rank_zero_info(f"nem fit: initialised weights{' and optimizer state' if carry else ''} from {source}")


BASE_CONFIG = Path(__file__).with_name("base.yaml")  # trainer, loggers and callbacks every run shares


def read_already(value: Any) -> None:
    """``base`` of a config file: read before the file by ``expand_bases``; nothing is left to parse or save, so
    ``--print_config`` and the saved config.yaml show the complete result without it (and rerun from anywhere)."""
    return None


def warn_slow_bf16(trainer: Trainer) -> None:
    """Warn when bf16 runs on a CPU without native bf16 support, where it is emulated and many times slower."""
    if not str(trainer.precision).startswith("bf16") or not isinstance(trainer.accelerator, CPUAccelerator):
        return
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own check (AVX-512 or AMX)
    except (AttributeError, RuntimeError):
        return
    if not native:
        rank_zero_warn(
            f"trainer.precision={trainer.precision} on a CPU without native bf16: it is emulated, about 10x slower "
            "than float32 on such CPUs (benchmarks/RESULTS.md); pass --trainer.precision 32-true"
        )


def one_line(err: BaseException) -> str:
    """The message of an error, without the worker traceback a DataLoader worker wraps around it."""
    text = str(err)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: the original message ends the text
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run(args: list[str] | None = None) -> NEMCLI:
    """Run ``nem`` with these arguments and return the CLI (trainer, model, data), for use in code."""
    wandb_never_blocks()
    try:
        base = {"default_config_files": [str(BASE_CONFIG)]}
        parser_kwargs = {subcommand: base for subcommand in ("fit", "validate", "test", "predict")}
        return NEMCLI(
            NEMLightningModule,
            GroupingDataModule,
            args=args,
            parser_kwargs=parser_kwargs,
            parser_class=NEMArgumentParser,
        )
    except NEMError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        # Lightning stops on SIGTERM with SystemExit() (status 0): a scheduler would record a finished run.
        print("nem: stopped by SIGTERM (last.ckpt was written for `nem fit`; resume with --ckpt_path)", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)


def main() -> None:
    """Entry point of the ``nem`` console script."""
    run()


if __name__ == "__main__":
    main()
