"""Train several `nem fit` runs side by side on one device and bring their results back into one folder.

    # a GPU: the flying-shapes flagship and two variants, 10 minutes each, validating every 300 updates
    python benchmarks/side_by_side.py --out gpu_runs --minutes 10 --val-every 300 \\
        --run flagship=configs/flying_shapes.yaml \\
        --run "k5=configs/flying_shapes.yaml::--model.k 5" \\
        --run "float32=configs/flying_shapes.yaml::--trainer.precision 32-true"

    # a CPU: RNN-EM and N-EM on static shapes for 30 minutes, the cores shared out (or --threads N per run)
    python benchmarks/side_by_side.py --out cpu_runs --minutes 30 --val-every 200 \\
        --run rnn_em=configs/shapes.yaml --run n_em=configs/shapes_nem.yaml

    # the runs of a plan file (YAML or JSON; below), weights exported in float16
    python benchmarks/side_by_side.py --out gpu_runs --minutes 10 --plan plan.yaml --half

    # anywhere, in about a minute: tiny data and a few updates of two runs on the CPU (the tests use this mode)
    python benchmarks/side_by_side.py --out sbs_check --reduced

A run is a name, one or more config files and extra `nem fit` options: ``--run NAME=CONFIG[,CONFIG...][::OPTIONS]``
(the options split as a shell would), or an entry of a plan file::

    runs:
      - name: flagship
        config: configs/flying_shapes.yaml
      - name: k5
        config: [configs/flying_shapes.yaml]   # one file or a list
        args: --model.k 5                      # one string or a list

Steps:

1. each run's data (``data.path``, ``data.generate``, ``data.generate_seed``) and accelerator are read from its
   complete config (``nem fit ... --print_config``, all runs in one process);
2. every missing data file is generated once, before any run starts, however many runs share it (different
   files at the same time): runs that started together would otherwise each generate the same file;
3. the runs start together as ``nem fit`` processes, each with ``--data.path`` set to the prepared file, one
   CSVLogger folder ``<out>/runs/<name>/version_0`` and its output in ``<out>/fit_<name>.log``, W&B disabled;
   ``--minutes`` becomes ``--trainer.max_time``, ``--val-every`` ``--trainer.val_check_interval``, and on a CPU
   each run gets ``--threads`` (default: the cores shared out) through OMP_NUM_THREADS; a run's own options
   come after these and win; a run whose options ``nem fit`` refused in step 1 is not started, and reported
   with that exit status and message;
4. they are waited for until ``--deadline`` (default: ``--minutes`` plus 3 minutes for start-up and the last
   validation); runs still going then get SIGTERM (``nem fit`` writes last.ckpt and exits 143), and are killed
   a minute later;
5. ``<out>`` gets, per run, ``metrics_<name>.csv``, ``figure_<name>.png`` (its last overview figure, first
   sample), ``<name>.ckpt`` (the best checkpoint's weights only, ``nem-export``; ``--half`` for float16) and
   the log, and ``summary.md`` with each run's exit status, updates, updates per second, validation curve and
   best checkpoint, and the updates per second of all runs together.

``--reduced`` generates each run's dataset tiny (64 / 16 / 16 samples) under ``<out>/data`` and trains 4 updates
on the CPU, validating after 2 and 4; without ``--run`` or ``--plan`` it runs RNN-EM and N-EM on static shapes.
The exit status is 0 when every run exited 0, 1 otherwise (the results of the others are collected all the same).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # run names become file and folder names
REDUCED_SIZES = (64, 16, 16)
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
STARTUP_SECONDS = 180  # beyond --minutes: imports, data loading, the sanity check and the last validation
STOP_SECONDS = 60  # between SIGTERM at the deadline and SIGKILL: time to write last.ckpt


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


@dataclass
class Finished:
    """How a run ended: exit status (None: never started), seconds from start to exit, why it stopped."""

    returncode: int | None
    seconds: float
    timed_out: bool = False
    note: str = ""
    refused: bool = False  # nem fit refused its options: never started


def log(message: str) -> None:
    print(f"[side_by_side {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
# processes


def child_env(extra_paths: list[str] | tuple[str, ...] = (), threads: int | None = None) -> dict[str, str]:
    """Environment of every child: the package from src/, extra import paths, no W&B, unbuffered output.

    With ``threads``, OMP_NUM_THREADS and MKL_NUM_THREADS, which torch reads at start-up for its CPU threads.
    """
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    paths = [str(ROOT / "src"), *map(str, extra_paths), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def start(command: list[str], logfile: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` with its output (stdout and stderr) in ``logfile``."""
    with open(logfile, "w") as f:  # the child holds its own copy of the file
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def wait_all(processes: dict[str, subprocess.Popen], deadline: float | None = None) -> dict[str, Finished]:
    """Wait for every process until ``deadline`` (a ``time.monotonic()`` value, None for no limit).

    Processes still running at the deadline, or when this wait is interrupted (Ctrl-C), get SIGTERM, on which
    ``nem fit`` writes last.ckpt and exits 143; those still running ``STOP_SECONDS`` later are killed.
    """
    started = time.monotonic()
    done: dict[str, Finished] = {}
    stop_at: float | None = None  # when SIGTERM was sent
    reason = ""
    while len(done) < len(processes):
        try:
            for name, process in processes.items():
                if name not in done and process.poll() is not None:
                    done[name] = Finished(process.returncode, time.monotonic() - started, bool(stop_at), reason)
            now = time.monotonic()
            if stop_at is None and deadline is not None and now >= deadline:
                stop_at, reason = now, "stopped at the deadline"
                for name, process in processes.items():
                    if name not in done:
                        process.send_signal(signal.SIGTERM)
            elif stop_at is not None and now >= stop_at + STOP_SECONDS:
                for name, process in processes.items():
                    if name not in done:
                        process.kill()
                        process.wait()
                        done[name] = Finished(process.returncode, now - started, True, f"{reason}, killed")
            time.sleep(0.2)
        except KeyboardInterrupt:
            # the children got the same Ctrl-C; stop them the same way and still collect what they wrote
            if stop_at is None:
                stop_at, reason = time.monotonic(), "interrupted"
                for name, process in processes.items():
                    if name not in done and process.poll() is None:
                        process.send_signal(signal.SIGTERM)
    return done


# ----------------------------------------------------------------------------------------------------------------
# 1. each run's data and accelerator, from its complete config

# One process for all runs: `nem fit ... --print_config` prints the config the run would use (config files,
# the base config and options merged) and exits before anything is built.
RESOLVE = """
import contextlib, io, json, os, sys
import torch, yaml
from nem_lightning.cli import run
report = {"cuda": torch.cuda.is_available(), "cpus": os.cpu_count(), "runs": {}}
for name, args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run(["fit", *args, "--print_config"])
    except SystemExit as stop:
        code = stop.code or 0
    if code:
        lines = err.getvalue().strip().splitlines() or [f"exit {code}"]
        report["runs"][name] = {"error": lines[-1], "code": code if isinstance(code, int) else 1, "output": lines}
        continue
    config = yaml.safe_load(out.getvalue())
    data = config.get("data") or {}
    report["runs"][name] = {
        "path": data.get("path"), "generate": data.get("generate"), "seed": data.get("generate_seed", 0),
        "accelerator": str((config.get("trainer") or {}).get("accelerator", "auto")),
    }
print("RESOLVED " + json.dumps(report))
"""


def resolve(runs: list[Run], mode_options: list[str], out: Path, env: dict[str, str], cwd: Path) -> dict:
    """Each run's data settings and accelerator as its complete config states them, and the host's devices.

    Returns ``{"cuda": bool, "cpus": int, "runs": {name: {path, generate, seed, accelerator}}}``; a run whose
    options ``nem fit`` refuses gets ``{error, code, output}`` instead: its message, exit status and stderr.
    """
    plan = json.dumps([[run.name, config_args_with(run, mode_options)] for run in runs])
    logfile = out / "resolve.log"
    with open(logfile, "w") as f:
        done = subprocess.run(
            [sys.executable, "-c", RESOLVE, plan], stdout=subprocess.PIPE, stderr=f, text=True, cwd=cwd, env=env
        )
        f.write(done.stdout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESOLVED ")]
    if done.returncode or not lines:
        raise RuntimeError(f"reading the runs' configs failed (exit {done.returncode}); see {logfile}")
    return json.loads(lines[-1][len("RESOLVED ") :])


def config_args_with(run: Run, mode_options: list[str]) -> list[str]:
    """A run's ``nem fit`` options: its configs, the side-by-side options, then its own (which win)."""
    configs = [arg for config in run.configs for arg in ("--config", config)]
    return [*configs, *mode_options, *run.args]


# ----------------------------------------------------------------------------------------------------------------
# 2. data: every missing file once


@dataclass
class DataFile:
    """A data file some runs read, and how to generate it (``generate`` None: it must exist already)."""

    path: Path
    generate: str | None
    seed: int
    sizes: tuple[int, int, int] | None = None  # None: the generator's defaults, as `nem fit` would use
    runs: list[str] = field(default_factory=list)


def data_files(runs: list[Run], resolved: dict, cwd: Path, reduced_data: Path | None = None) -> dict[str, DataFile]:
    """Run name -> the data file it reads; runs sharing a file share one ``DataFile``.

    With ``reduced_data`` each generated dataset is written small into that folder instead of its own path.
    Two runs wanting different data at one path are refused: one of them would train on the other's.
    """
    by_path: dict[Path, DataFile] = {}
    of_run: dict[str, DataFile] = {}
    for run in runs:
        info = resolved["runs"].get(run.name) or {}
        if "error" in info or not (info.get("path") or info.get("generate")):
            continue  # refused (never started), or no data settings: nothing to prepare
        generate, seed = info.get("generate"), int(info.get("seed") or 0)
        if reduced_data is not None and generate:
            path = reduced_data / (f"{generate}.h5" if seed == 0 else f"{generate}_seed{seed}.h5")
            sizes = REDUCED_SIZES
        else:
            # the data module's own default for a null path
            path = (cwd / (info.get("path") or os.path.join("data", f"{generate}.h5"))).resolve()
            sizes = None
        entry = by_path.setdefault(path, DataFile(path, generate, seed, sizes))
        if generate and entry.generate is None:
            entry.generate, entry.seed = generate, seed  # a run that can generate it does so for the others
        elif generate and (entry.generate, entry.seed) != (generate, seed):
            other = entry.runs[0]
            raise ValueError(
                f"runs {other!r} and {run.name!r} want different data at {path} ({entry.generate} seed "
                f"{entry.seed}, {generate} seed {seed}); give one of them another --data.path"
            )
        entry.runs.append(run.name)
        of_run[run.name] = entry
    return of_run


GENERATE = """
import json, sys
from nem_lightning.generators import generate_dataset
sizes = json.loads(sys.argv[4])
generate_dataset(sys.argv[1], sys.argv[2], seed=int(sys.argv[3]), sizes=tuple(sizes) if sizes else None, progress=False)
print(f"generated {sys.argv[1]} (seed {sys.argv[3]}, sizes {sizes or 'default'}) at {sys.argv[2]}")
"""


def prepare_data(files: list[DataFile], out: Path, env: dict[str, str]) -> dict[Path, str]:
    """Generate every missing file, each once, different files at the same time; return path -> why it failed.

    Files that exist are left as they are (``nem fit`` itself refuses one from an older generator).
    """
    missing = {f.path: f for f in files if not f.path.exists()}
    failed: dict[Path, str] = {}
    processes = {}
    for path, entry in missing.items():
        if entry.generate is None:
            failed[path] = f"{path} does not exist and its runs set no data.generate"
            continue
        logfile = out / f"data_{entry.generate}_{len(processes)}.log"
        command = [sys.executable, "-c", GENERATE, entry.generate, str(path), str(entry.seed), json.dumps(entry.sizes)]
        log(f"generating {entry.generate} at {path} for {', '.join(entry.runs)}")
        processes[str(path)] = (start(command, logfile, env), logfile)
    for path, (process, logfile) in processes.items():
        if process.wait():
            failed[Path(path)] = f"generating {path} failed (exit {process.returncode}); see {logfile.name}"
    return failed


# ----------------------------------------------------------------------------------------------------------------
# 3. the runs


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


def threads_per_run(runs: list[Run], resolved: dict, threads: int | None) -> dict[str, int | None]:
    """CPU threads of each run: ``threads`` if given, else the cores shared out among the runs on the CPU.

    Runs on a GPU are left to torch's defaults (their CPU work is the loader's).
    """

    def on_cpu(run: Run) -> bool:
        accelerator = (resolved["runs"].get(run.name) or {}).get("accelerator", "auto")
        return accelerator == "cpu" or (accelerator == "auto" and not resolved.get("cuda"))

    started = [run for run in runs if "error" not in (resolved["runs"].get(run.name) or {})]  # refused: not run
    cpu_runs = [run.name for run in started if on_cpu(run)]
    share = threads or max(1, int(resolved.get("cpus") or 1) // max(1, len(cpu_runs)))
    return {run.name: share if run.name in cpu_runs else None for run in runs}


# ----------------------------------------------------------------------------------------------------------------
# 5. results


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a CSVLogger metrics.csv; none if the file is missing."""
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def curve(rows: list[dict[str, str]]) -> list[dict[str, float]]:
    """Validation rows: update, minutes, val AMI (mean of steps and last step), confidence, loss."""
    points = []
    for row in rows:
        if row.get("val/ami"):

            def number(key: str, row: dict[str, str] = row) -> float:
                return float(row[key]) if row.get(key) else float("nan")

            points.append(
                {
                    "update": number("step"),
                    "minutes": number("time/minutes"),
                    "ami": number("val/ami"),
                    "ami_last": number("val/ami_last"),
                    "confidence": number("val/confidence"),
                    "loss": number("val/loss"),
                }
            )
    return points


def updates_done(rows: list[dict[str, str]], logfile: Path | None = None) -> int:
    """Updates a run made: its last logged step (0-based) plus one, or the last epoch line's step if later.

    Training rows are logged every ``log_every_n_steps`` updates and validation rows at each validation, so
    updates after the last of them are not counted.
    """
    steps = [int(float(row["step"])) + 1 for row in rows if row.get("step")]
    if logfile is not None and logfile.is_file():
        steps += [int(m) for m in re.findall(r"^epoch \d+ \| step (\d+)", logfile.read_text(errors="replace"), re.M)]
    return max(steps, default=0)


def last_figure(run_dir: Path) -> Path | None:
    """The last overview figure a run drew (latest epoch and step, lowest sample index), if any."""
    found = []
    for path in (run_dir / "figures").glob("epoch*_step*_sample*.png"):
        match = re.fullmatch(r"epoch(\d+)_step(\d+)_sample(\d+)\.png", path.name)
        if match:
            epoch, step, sample = map(int, match.groups())
            found.append(((epoch, step, -sample), path))
    return max(found)[1] if found else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """The run's best checkpoint (``best-*.ckpt``, the newest if several), if it validated."""
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name))
    return found[-1] if found else None


def collect(name: str, run_dir: Path, out: Path) -> dict[str, Path]:
    """Copy a run's metrics.csv and last overview figure into ``out`` as metrics_<name>.csv, figure_<name>.png."""
    copied = {}
    if (run_dir / "metrics.csv").is_file():
        copied["metrics"] = Path(shutil.copy(run_dir / "metrics.csv", out / f"metrics_{name}.csv"))
    figure = last_figure(run_dir)
    if figure is not None:
        copied["figure"] = Path(shutil.copy(figure, out / f"figure_{name}.png"))
    return copied


# One process for all exports: each is `nem-export SOURCE TARGET [--half]` (nem_lightning.checkpoints), and one
# import of torch and the module instead of one per run.
EXPORT = """
import json, sys
from nem_lightning.checkpoints import main
for name, source, target, half in json.loads(sys.argv[1]):
    try:
        main([source, target, *(["--half"] if half else [])])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception as err:
        print(f"{type(err).__name__}: {err}")
        code = 1
    print(f"EXPORTED {name} {code}", flush=True)
"""


def export_weights(
    items: dict[str, tuple[Path, Path]], logfile: Path, env: dict[str, str], cwd: Path | None = None, half: bool = False
) -> set[str]:
    """Write each ``name: (checkpoint, target)`` as a weights-only file (``nem-export``); return the names done."""
    if not items:
        return set()
    plan = json.dumps([[name, str(source), str(target), half] for name, (source, target) in items.items()])
    with open(logfile, "w") as f:
        done = subprocess.run(
            [sys.executable, "-c", EXPORT, plan], stdout=subprocess.PIPE, stderr=f, text=True, cwd=cwd, env=env
        )
        f.write(done.stdout)
    ok = set(re.findall(r"^EXPORTED (\S+) 0$", done.stdout, re.M))
    return {name for name in ok if name in items and items[name][1].is_file()}


def rates(rows: list[dict[str, str]], updates: int, seconds: float) -> tuple[float, float | None]:
    """Updates per second over the process's life (start-up included), and between the first and last
    validation (start-up, compilation and the first validation excluded; None with fewer than two)."""
    overall = updates / seconds if seconds > 0 else float("nan")
    points = [p for p in curve(rows) if p["minutes"] == p["minutes"]]  # rows with time/minutes
    if len(points) < 2 or points[-1]["minutes"] <= points[0]["minutes"]:
        return overall, None
    first, last = points[0], points[-1]
    return overall, (last["update"] - first["update"]) / ((last["minutes"] - first["minutes"]) * 60)


def run_section(
    run: Run, end: Finished | None, rows: list[dict[str, str]], best: Path | None, exported: bool, threads: int | None
) -> list[str]:
    """The summary's part on one run: its options, exit, best checkpoint and validation curve."""
    lines = [f"## {run.name}", "", f"`nem fit {shlex.join(config_args_with(run, []))}`", ""]
    if end is None or end.returncode is None:
        return [*lines, f"not started: {end.note if end else 'unknown'}", ""]
    note = f" ({end.note})" if end.note else ""
    cpu = f", {threads} CPU thread{'s' if threads > 1 else ''}" if threads else ""
    lines.append(f"exit {end.returncode}{note}{cpu}; log fit_{run.name}.log")
    if best is None:
        lines.append("no best checkpoint (it never validated)")
    else:
        lines.append(
            f"best checkpoint {best.name}" + (f", weights in {run.name}.ckpt" if exported else ", not exported")
        )
    points = curve(rows)
    if points:
        lines += ["", "| step | minutes | val/loss | val/ami | val/ami_last |", "|---|---|---|---|---|"]
        lines += [
            f"| {p['update']:.0f} | {p['minutes']:.2f} | {p['loss']:.1f} | {p['ami']:.4f} | {p['ami_last']:.4f} |"
            for p in points
        ]
    return [*lines, ""]


def summarise(
    runs: list[Run],
    finished: dict[str, Finished],
    out: Path,
    header: list[str],
    exported: set[str],
    threads: dict[str, int | None],
) -> str:
    """summary.md: a table of all runs (exit, updates, updates/s) with their sum, then each run's curve.

    Steps in the curves are Lightning's 0-based ``step`` of the validation row: step 1 follows update 2.
    """
    table = [
        "| run | exit | updates | seconds | updates/s | updates/s between validations | best checkpoint |",
        "|---|---|---|---|---|---|---|",
    ]
    sections, total, total_steady = [], 0.0, 0.0
    for run in runs:
        run_dir = out / "runs" / run.name / "version_0"
        rows, end, best = read_metrics(run_dir / "metrics.csv"), finished.get(run.name), best_checkpoint(run_dir)
        if end is None or end.returncode is None:
            table.append(f"| {run.name} | not started | 0 | | | | |")
        else:
            updates = updates_done(rows, out / f"fit_{run.name}.log")
            overall, steady = rates(rows, updates, end.seconds)
            total += overall if overall == overall else 0.0  # NaN for a run refused before it started
            total_steady += steady or 0.0
            flag = " (deadline)" if end.timed_out else " (refused)" if end.refused else ""
            table.append(
                f"| {run.name} | {end.returncode}{flag} | {updates} | {end.seconds:.0f} | "
                f"{'' if overall != overall else f'{overall:.2f}'} | {'' if steady is None else f'{steady:.2f}'} | "
                f"{best.name if best else ''} |"
            )
        sections += run_section(run, end, rows, best, run.name in exported, threads.get(run.name))
    table.append(f"| all runs | | | | {total:.2f} | {total_steady:.2f} | |")
    text = [
        *header,
        "",
        "updates: the last logged step + 1; updates/s: updates over the process's seconds (start-up included); "
        "between validations: from the first to the last validation. The last row adds up the runs: what the "
        "device did with all of them running.",
        "",
        *table,
        "",
        *sections,
    ]
    return "\n".join(text) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the results; must be empty or new")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=CONFIG[::OPTIONS]",
        help="a run: name, config file(s) separated by commas, then after '::' extra nem fit options (repeatable)",
    )
    parser.add_argument("--plan", type=Path, help="YAML or JSON file listing runs (name, config, args)")
    parser.add_argument("--minutes", type=float, help="training time of each run (--trainer.max_time)")
    parser.add_argument("--val-every", type=int, help="validate every N updates (--trainer.val_check_interval)")
    parser.add_argument("--threads", type=int, help="CPU threads per run on the CPU (default: the cores shared out)")
    parser.add_argument(
        "--deadline",
        type=float,
        help="seconds to wait for the runs, then stop them (default: --minutes + 3 minutes; reduced: 600; else none)",
    )
    parser.add_argument("--half", action="store_true", help="export the best weights in float16")
    parser.add_argument("--reduced", action="store_true", help="tiny data and 4 updates per run, on the CPU")
    return parser.parse_args(argv)


def gather_runs(args: argparse.Namespace) -> list[Run]:
    """The runs of ``--plan`` then ``--run``; the reduced mode's default without either."""
    runs = (read_plan(args.plan) if args.plan else []) + [parse_run(text) for text in args.run]
    if not runs and args.reduced:
        runs = reduced_runs()
    if not runs:
        raise ValueError("no runs: give --run NAME=CONFIG[::OPTIONS] or --plan FILE (or --reduced)")
    check_names(runs)
    return runs


def empty_out(path: Path) -> Path:
    """``--out``, created; refused when it holds anything, so earlier results are never overwritten."""
    out = path.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        sys.exit(f"side_by_side: {out} is not empty; choose another --out (results are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def train(
    runs: list[Run],
    out: Path,
    options: list[str],
    resolved: dict,
    files: dict[str, DataFile],
    failed: dict[Path, str],
    threads: dict[str, int | None],
    deadline: float | None,
    cwd: Path | None = None,
) -> dict[str, Finished]:
    """Start every run that can start, together, and wait for them until ``deadline`` seconds from now.

    Runs whose options ``nem fit`` refused are not started: they end with that exit status, the message in their
    log. Runs whose data could not be made are not started either (exit status None).
    """
    finished, processes = {}, {}
    for run in runs:
        info, data, logfile = resolved["runs"].get(run.name) or {}, files.get(run.name), out / f"fit_{run.name}.log"
        if "error" in info:
            logfile.write_text("\n".join(info.get("output") or [info["error"]]) + "\n")
            finished[run.name] = Finished(info.get("code", 2), 0.0, note=f"not started: {info['error']}", refused=True)
            log(f"{run.name}: refused by nem fit, not started ({info['error']})")
        elif data is not None and data.path in failed:
            finished[run.name] = Finished(None, 0.0, note=failed[data.path])
            log(f"{run.name}: not started, {failed[data.path]}")
        else:
            command = fit_command(run, out / "runs", options, data.path if data else None)
            processes[run.name] = start(command, logfile, child_env(threads=threads.get(run.name)), cwd)
            count = threads.get(run.name)
            log(f"{run.name}: started" + (f" with {count} CPU thread{'s' if count > 1 else ''}" if count else ""))
    finished.update(wait_all(processes, None if deadline is None else time.monotonic() + deadline))
    for name in processes:
        end = finished[name]
        log(f"{name}: exit {end.returncode} after {end.seconds:.0f} s" + (f" ({end.note})" if end.note else ""))
    return finished


def bring_back(runs: list[Run], out: Path, env: dict[str, str], cwd: Path | None, half: bool) -> set[str]:
    """Copy each run's metrics.csv and last figure to ``out``; export each best checkpoint's weights there."""
    best = {}
    for run in runs:
        run_dir = out / "runs" / run.name / "version_0"
        collect(run.name, run_dir, out)
        if (checkpoint := best_checkpoint(run_dir)) is not None:
            best[run.name] = (checkpoint, out / f"{run.name}.ckpt")
    exported = export_weights(best, out / "export.log", env, cwd, half)
    for name in sorted(set(best) - exported):
        log(f"{name}: exporting its best checkpoint failed; see export.log")
    return exported


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side runs and write their results; 0 when every run exited 0, else 1."""
    args = parse_args(argv)
    try:
        runs = gather_runs(args)
    except (ValueError, OSError, yaml.YAMLError) as err:
        sys.exit(f"side_by_side: {err}")
    out = empty_out(args.out)
    started, cwd, env = time.monotonic(), Path.cwd(), child_env()
    options = mode_options(args.reduced, args.minutes, args.val_every)
    try:  # 1-2. configs, then the data, before the first run starts
        resolved = resolve(runs, options, out, env, cwd)
        files = data_files(runs, resolved, cwd, out / "data" if args.reduced else None)
    except (RuntimeError, ValueError) as err:
        sys.exit(f"side_by_side: {err}")
    failed = prepare_data(list({id(f): f for f in files.values()}.values()), out, env)
    threads = threads_per_run(runs, resolved, args.threads)
    deadline = args.deadline
    if deadline is None and args.minutes is not None:
        deadline = args.minutes * 60 + STARTUP_SECONDS
    if deadline is None and args.reduced:
        deadline = 600
    finished = train(runs, out, options, resolved, files, failed, threads, deadline, cwd)  # 3-4.
    exported = bring_back(runs, out, env, cwd, args.half)  # 5.
    header = [
        f"# {len(runs)} runs side by side{' (reduced mode)' if args.reduced else ''}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; CUDA {'available' if resolved.get('cuda') else 'not available'}, "
        f"{resolved.get('cpus')} CPU cores; {time.monotonic() - started:.0f} s in all; options of every run: "
        f"`{shlex.join(options) or 'none'}`",
    ]
    (out / "summary.md").write_text(summarise(runs, finished, out, header, exported, threads))
    log(f"done in {(time.monotonic() - started) / 60:.1f} minutes; summary in {out / 'summary.md'}")
    return 0 if all(end.returncode == 0 for end in finished.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
