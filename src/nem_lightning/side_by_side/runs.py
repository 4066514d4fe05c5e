"""The runs of a side-by-side session: ``--run`` and plan-file parsing, and the `nem fit` command line of
each run."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SRC = Path(__file__).resolve().parents[2]  # the folder holding the nem_lightning package (src/ in a checkout)
ROOT = SRC.parent  # a checkout's root: its configs/ hold the reduced mode's default runs
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # run names become file and folder names
# 4 updates of 8 samples, validation on 16 after updates 2 and 4, no loader workers and no compile: a minute
REDUCED_OPTIONS = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.max_steps",
    "4",
    "--trainer.val_check_interval",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_model_summary",
    "false",
    "--data.batch_size",
    "8",
    "--data.val_size",
    "16",
    "--data.num_workers",
    "0",
    "--model.compile",
    "false",
]


@dataclass
class Run:
    """One `nem fit` run: a name (its folder and file names), its config files and extra options."""

    name: str
    configs: list[str]
    args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(f"run name {self.name!r}: use letters, digits, '.', '_' and '-' only")
        if not self.configs:
            raise ValueError(f"run {self.name!r} names no config file")


# ----------------------------------------------------------------------------------------------------------------
# the list of runs


def parse_run(text: str) -> Run:
    """``NAME=CONFIG[,CONFIG...][::OPTIONS]`` as given to ``--run``."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ValueError(f"--run {text!r}: expected NAME=CONFIG[,CONFIG...][::OPTIONS]")
    configs, _, options = rest.partition("::")
    return Run(name.strip(), [c for c in configs.split(",") if c], shlex.split(options))


def read_plan(path: Path) -> list[Run]:
    """The runs of a plan file: ``runs:`` (or the top level) a list of ``name``, ``config``, optional ``args``."""
    plan = yaml.safe_load(path.read_text())  # JSON is YAML too
    entries = plan.get("runs") if isinstance(plan, dict) else plan
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a list of runs (name, config, args) under 'runs:'")
    runs = []
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry or "config" not in entry:
            raise ValueError(f"{path}: each run needs 'name' and 'config', got {entry!r}")
        configs = entry["config"] if isinstance(entry["config"], list) else [entry["config"]]
        args = entry.get("args") or []
        args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
        runs.append(Run(str(entry["name"]), [str(c) for c in configs], args))
    return runs


def check_names(runs: list[Run]) -> None:
    names = [run.name for run in runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"run names must differ: {', '.join(twice)} given more than once")


def reduced_runs() -> list[Run]:
    """The reduced mode's default: the paper's two static-shapes runs, sharing one dataset."""
    return [
        Run("rnn_em", [str(ROOT / "configs" / "shapes.yaml")]),
        Run("n_em", [str(ROOT / "configs" / "shapes_nem.yaml")]),
    ]


# ----------------------------------------------------------------------------------------------------------------
# the command line of a run


def config_args_with(run: Run, mode_options: list[str]) -> list[str]:
    """A run's ``nem fit`` options: its configs, the side-by-side options, then its own (which win)."""
    configs = [arg for config in run.configs for arg in ("--config", config)]
    return [*configs, *mode_options, *run.args]


def logger_option(runs_dir: Path, name: str) -> list[str]:
    """One CSVLogger in ``<runs_dir>/<name>/version_0`` instead of the base config's CSV and W&B loggers."""
    logger = {
        "class_path": "pytorch_lightning.loggers.CSVLogger",
        "init_args": {"save_dir": str(runs_dir), "name": name, "version": 0},
    }
    return ["--trainer.logger", json.dumps(logger)]


def fit_command(
    run: Run, runs_dir: Path, mode_options: list[str] | tuple[str, ...] = (), data_path: Path | None = None
) -> list[str]:
    """The ``nem fit`` command line of a run, logging into ``<runs_dir>/<run.name>/version_0``."""
    data = ["--data.path", str(data_path)] if data_path is not None else []
    return [
        sys.executable,
        "-m",
        "nem_lightning.cli",
        "fit",
        *config_args_with(run, list(mode_options)),
        *data,  # after the run's own options: the file prepared for it from them
        *logger_option(runs_dir, run.name),
    ]


def max_time(minutes: float) -> str:
    """``--trainer.max_time`` for a number of minutes: DD:HH:MM:SS."""
    seconds = round(minutes * 60)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def mode_options(reduced: bool, minutes: float | None, val_every: int | None) -> list[str]:
    """Options every run gets: the reduced limits, the time budget and the validation interval."""
    options = list(REDUCED_OPTIONS) if reduced else []
    if minutes is not None:
        options += ["--trainer.max_time", max_time(minutes)]
    if val_every is not None:
        options += ["--trainer.val_check_interval", str(val_every)]
    return options
