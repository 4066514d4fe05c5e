"""Several ``nem fit`` runs side by side on one device, their data made once and their results brought back into one
folder: ``nem-side-by-side`` (``runner.main``), and ``nem-table --train``, which trains the paper's table this way.

Parts: ``runs`` (the list of runs and each run's command line), ``prepare`` (configs resolved and data made before
any run starts), ``processes`` (start, environment, the wait with a deadline), ``results`` (curves, figures,
weights and the summary), ``runner`` (the command).
"""

from nem_lightning.side_by_side.prepare import DataFile, data_files, prepare_data, resolve, threads_per_run
from nem_lightning.side_by_side.processes import Finished, child_env, log, start, wait_all
from nem_lightning.side_by_side.results import (
    best_checkpoint,
    collect,
    curve,
    export_weights,
    last_figure,
    read_metrics,
    summarise,
    updates_done,
)
from nem_lightning.side_by_side.runner import STARTUP_SECONDS, main, train_side_by_side
from nem_lightning.side_by_side.runs import (
    Run,
    check_names,
    fit_command,
    max_time,
    mode_options,
    parse_run,
    read_plan,
    reduced_runs,
)

__all__ = [
    "STARTUP_SECONDS",
    "DataFile",
    "Finished",
    "Run",
    "best_checkpoint",
    "check_names",
    "child_env",
    "collect",
    "curve",
    "data_files",
    "export_weights",
    "fit_command",
    "last_figure",
    "log",
    "main",
    "max_time",
    "mode_options",
    "parse_run",
    "prepare_data",
    "read_metrics",
    "read_plan",
    "reduced_runs",
    "resolve",
    "start",
    "summarise",
    "threads_per_run",
    "train_side_by_side",
    "updates_done",
    "wait_all",
]
