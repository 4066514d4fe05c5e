"""The ``nem`` command: LightningCLI with fit/validate/test/predict, and the project's run policy.

    nem fit --config configs/shapes.yaml
    nem test --config configs/shapes.yaml --ckpt_path runs/shapes/version_0/checkpoints/last.ckpt

This is the one place that decides run policy: refusing to score untrained weights, test-time
overrides of K and the number of steps, weights-only initialisation for staged training, and turning
the project's own errors into one readable line.
"""

from __future__ import annotations

import csv
import inspect
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import Callback, ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nem_lightning.callbacks import EpochLog, ResumeState, wandb_run_id
from nem_lightning.data import GroupingDataModule
from nem_lightning.errors import ConfigError, NEMError
from nem_lightning.files import atomic_path
from nem_lightning.module import NEMLightningModule
from nem_lightning.prediction import HDF5PredictionWriter

NEEDS_CHECKPOINT = ("validate", "test", "predict")
EVAL_OVERRIDES = ("k", "steps", "score_steps")
# Model options that change the network: a checkpoint trained with other values cannot be scored under this config.
ARCHITECTURE_OPTIONS = ("architecture", "m_step", "input_shape", "hidden_size", "distribution", "layer_norm")
SIGTERM_EXIT = 143  # 128 + SIGTERM, what a scheduler expects from a process stopped by SIGTERM


class NEMCLI(LightningCLI):
    """LightningCLI for Neural EM."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Private Lightning hook, the only one that knows which subcommand a parser is for.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
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
        return parser

    def _parse_ckpt_path(self) -> None:
        # Lightning replaces the config's model options by the checkpoint's (Lightning-AI/pytorch-lightning#21455).
        # Read the checkpoint first, so a damaged file and a conflicting architecture each give one line.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        asked = {}
        self._checkpoint: dict[str, Any] = {}  # read once; the run policy below takes what it needs from it
        if ckpt and Path(ckpt).is_file():
            self._checkpoint = read_checkpoint(ckpt)
            trained = dict(self._checkpoint.get("hyper_parameters") or {})
            asked = {name: self.config[subcommand].model.get(name) for name in (*ARCHITECTURE_OPTIONS, "k", "steps")}
            check_architecture(ckpt, asked, trained)
        super()._parse_ckpt_path()
        if subcommand in NEEDS_CHECKPOINT:
            config = self.config[subcommand]
            for name in EVAL_OVERRIDES:
                value = config.get(f"eval.{name}")
                if isinstance(value, int) and value < 1:
                    raise NEMError(f"--eval.{name} must be at least 1, got {value}")
                if value is not None:
                    config[f"model.{name}"] = value
            for name in ("k", "steps"):
                used = config.model.get(name)
                if asked.get(name) not in (None, _default(name), used):
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
        name_loggers(config.trainer.logger, run_name(config))
        self._versioned: list[Any] = []
        self._resumed = self.subcommand == "fit" and reserve_run_folders(
            self.config.fit.trainer.logger, self.config.fit.ckpt_path, self._versioned
        )
        if self._resumed:
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
        for item in self._versioned:  # the loggers have their folders; the saved config.yaml, run again, gets new ones
            item.init_args.version = None
        if self._resumed:
            step = int(self._checkpoint.get("global_step", 0))
            for logger in self.trainer.loggers:
                if isinstance(logger, CSVLogger):
                    keep_metrics_history(logger, step)
        if self.subcommand == "predict":
            output = self.config.predict.output
            check_writable(output)
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
        if self.subcommand == "fit" and not any(isinstance(c, ResumeState) for c in callbacks):
            callbacks.append(ResumeState())  # exact resume: random streams and the W&B run id in every checkpoint
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


BASE_CONFIG = Path(__file__).with_name("base.yaml")  # trainer, loggers and callbacks every run shares
LOGGERS_WITH_NAMES = ("CSVLogger", "TensorBoardLogger", "WandbLogger")


def run_name(config: Any) -> str:
    """The run's name: ``name`` if set, else the first ``--config`` file's stem, else ``nem``."""
    if config.get("name"):
        return str(config.name)
    files = [Path(str(path)) for path in config.get("config") or []]
    return files[0].stem if files else "nem"


def name_loggers(loggers: Any, name: str) -> None:
    """Give each CSV, TensorBoard and W&B logger of the config that has no name of its own the run's name."""
    for item in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(item, "init_args", None)
        if str(getattr(item, "class_path", "")).endswith(LOGGERS_WITH_NAMES) and not args.get("name"):
            args.name = name


RESERVED: list[Path] = []  # run folders this process created, removed again if the run fails before writing


def _next_version(root: Path) -> int:
    versions = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def reserve_run_folders(loggers: Any, ckpt_path: str | None, versioned: list[Any] | None = None) -> bool:
    """Give each CSV/TensorBoard logger without a version a run folder of its own, created atomically.

    Lightning picks ``version_N`` by listing the folder, so two runs started together would share one. Here the
    folder is made with ``mkdir`` (which fails if it exists) and the logger is told its version. A run resumed
    from ``<root>/version_N/checkpoints/*.ckpt`` goes on in ``version_N``. Only the first process reserves:
    under DDP Lightning broadcasts its folders to the others. Returns whether a run resumes in its own folder;
    the logger entries given a version are appended to ``versioned``.
    """
    if int(os.environ.get("RANK", 0)) != 0 or int(os.environ.get("LOCAL_RANK", 0)) != 0:
        return False
    resumed = False
    for item in loggers if isinstance(loggers, list) else [loggers]:
        class_path = str(getattr(item, "class_path", ""))
        if not class_path.endswith(("CSVLogger", "TensorBoardLogger")) or item.init_args.get("version") is not None:
            continue
        args = item.init_args
        root = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
        run_dir = Path(ckpt_path).resolve().parents[1] if ckpt_path else None
        if run_dir is not None and run_dir.parent == root.resolve() and run_dir.name.startswith("version_"):
            args.version, resumed = int(run_dir.name[8:]), True
            if versioned is not None:
                versioned.append(item)
            continue
        root.mkdir(parents=True, exist_ok=True)
        version = _next_version(root)
        while True:
            try:
                (root / f"version_{version}").mkdir()
                break
            except FileExistsError:  # another run took it between listing and mkdir
                version += 1
        RESERVED.append(root / f"version_{version}")
        args.version = version
        if versioned is not None:
            versioned.append(item)
    return resumed


def keep_metrics_history(logger: CSVLogger, step: int) -> None:
    """Keep a resumed run's ``metrics.csv`` rows up to its checkpoint (Lightning's CSV logger would delete them).

    Rows logged after the checkpoint (training steps from ``step`` on) are dropped: the resumed run logs them
    again. Validation rows at ``step`` came before the checkpoint and stay.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        header, rows = list(reader.fieldnames or []), list(reader)

    def before(row: dict[str, str]) -> bool:
        logged = int(float(row.get("step") or 0))
        training = any(row.get(key) for key in header if key.startswith("train/"))
        return logged < step or (logged == step and not training)

    writer = logger.experiment  # created now: it deletes metrics.csv, whose rows are in memory
    with atomic_path(path) as partial, open(partial, "w", newline="") as file:
        table = csv.DictWriter(file, fieldnames=header)
        table.writeheader()
        table.writerows(row for row in rows if before(row))
    writer.metrics_keys = sorted(header)  # so the next rows append under the same columns


def continue_wandb_run(loggers: Any, run_id: str | None) -> None:
    """Point each W&B logger without an id or version at ``run_id`` (a resumed checkpoint's run), if any."""
    if not run_id:
        return
    for item in loggers if isinstance(loggers, list) else [loggers]:
        args = getattr(item, "init_args", None)
        if (
            str(getattr(item, "class_path", "")).endswith("WandbLogger")
            and not args.get("id")
            and not args.get("version")
        ):
            args.id = run_id


def discard_unused_run_folders() -> None:
    """Remove the folders this process reserved if the run wrote no checkpoint or metrics into them."""
    while RESERVED:
        folder = RESERVED.pop()
        if folder.is_dir() and not any(folder.rglob("*.ckpt")) and not any(folder.rglob("metrics.csv")):
            shutil.rmtree(folder, ignore_errors=True)


def _default(name: str) -> Any:
    return inspect.signature(NEMLightningModule).parameters[name].default


def read_checkpoint(path: str, option: str = "--ckpt_path") -> dict[str, Any]:
    """A checkpoint's contents (tensors memory-mapped); NEMError naming ``option`` and the file if unreadable."""
    if not Path(path).is_file():
        raise NEMError(f"{option} {path!r} is not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a zip, not a pickle: all the same to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NEMError(f"{option} {path!r} is not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise NEMError(f"{option} {path!r} is not a Lightning checkpoint (it holds no state_dict)")
    return ckpt


def check_architecture(path: str, asked: dict[str, Any], trained: dict[str, Any]) -> None:
    """Refuse a checkpoint whose network differs from one the config asks for (options left at defaults ask nothing)."""

    def norm(value: Any) -> Any:
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else value

    conflicts = [
        f"{name}: config {norm(asked[name])}, checkpoint {norm(trained[name])}"
        for name in ARCHITECTURE_OPTIONS
        if name in trained
        and asked.get(name) is not None
        and norm(asked[name]) != norm(_default(name))
        and norm(asked[name]) != norm(trained[name])
    ]
    if conflicts:
        raise NEMError(
            f"--ckpt_path {path!r} holds another network than the config asks for ({'; '.join(conflicts)}); "
            f"use the config it was trained with"
        )


def check_writable(output: str) -> None:
    """Refuse, before any compute, an output file that cannot be written (missing folders are created later)."""
    if Path(output).is_dir():
        raise ConfigError(f"--output {output!r} is a directory; name an .h5 file")
    folder = Path(output).resolve().parent
    while not folder.exists():  # the nearest folder that exists is where the new ones will be made
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"--output {output!r}: {str(folder)!r} is a file, not a folder")
    try:  # a real write: permission bits alone say nothing for root or a read-only file system
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"--output {output!r}: folder {str(folder)!r} is not writable ({err.strerror})") from None


def load_weights(model: NEMLightningModule, path: str) -> None:
    """Copy the network weights of a checkpoint into ``model``; optimizer and loop state are not touched."""
    state = read_checkpoint(path, "--weights_from")["state_dict"]
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
    with atomic_path(target) as tmp:
        torch.save(state, tmp)


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
    RESERVED.clear()
    try:
        try:
            base = {"default_config_files": [str(BASE_CONFIG)]}
            parser_kwargs = {subcommand: base for subcommand in ("fit", "validate", "test", "predict")}
            return NEMCLI(NEMLightningModule, GroupingDataModule, args=args, parser_kwargs=parser_kwargs)
        except BaseException:
            discard_unused_run_folders()
            raise
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
