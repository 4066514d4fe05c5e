"""Train several `nem fit` runs side by side on one device and bring their results back into one folder.

    # a GPU: the flying-shapes flagship and two variants, 10 minutes each, validating every 300 updates
    nem-side-by-side --out gpu_runs --minutes 10 --val-every 300 \\
        --run flagship=configs/flying_shapes.yaml \\
        --run "k5=configs/flying_shapes.yaml::--model.k 5" \\
        --run "float32=configs/flying_shapes.yaml::--trainer.precision 32-true"

    # a CPU: RNN-EM and N-EM on static shapes for 30 minutes, the cores shared out (or --threads N per run)
    nem-side-by-side --out cpu_runs --minutes 30 --val-every 200 \\
        --run rnn_em=configs/shapes.yaml --run n_em=configs/shapes_nem.yaml

    # the runs of a plan file (YAML or JSON; below), weights exported in float16
    nem-side-by-side --out gpu_runs --minutes 10 --plan plan.yaml --half

    # anywhere, in about a minute: tiny data and a few updates of two runs on the CPU (the tests use this mode)
    nem-side-by-side --out sbs_check --reduced

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
import shlex
import sys
import time
from pathlib import Path

import yaml

from nem_lightning.side_by_side.prepare import DataFile, data_files, prepare_data, resolve, threads_per_run
from nem_lightning.side_by_side.processes import Finished, child_env, log, start, wait_all
from nem_lightning.side_by_side.results import best_checkpoint, collect, export_weights, summarise
from nem_lightning.side_by_side.runs import (
    Run,
    check_names,
    fit_command,
    mode_options,
    parse_run,
    read_plan,
    reduced_runs,
)

STARTUP_SECONDS = 180  # beyond --minutes: imports, data loading, the sanity check and the last validation


# ----------------------------------------------------------------------------------------------------------------
# the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nem-side-by-side", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        sys.exit(f"nem-side-by-side: {out} is not empty; choose another --out (results are never overwritten)")
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


def train_side_by_side(
    runs: list[Run],
    out: Path,
    *,
    minutes: float | None = None,
    val_every: int | None = None,
    threads: int | None = None,
    deadline: float | None = None,
    half: bool = False,
    reduced: bool = False,
) -> tuple[dict[str, Finished], set[str]]:
    """Steps 1-5 for ``runs`` into the folder ``out`` (which must exist): how each run ended and the names of the
    runs whose best weights were exported as ``<out>/<name>.ckpt``. ``summary.md`` is written last."""
    started, cwd, env = time.monotonic(), Path.cwd(), child_env()
    options = mode_options(reduced, minutes, val_every)
    try:  # 1-2. configs, then the data, before the first run starts
        resolved = resolve(runs, options, out, env, cwd)
        files = data_files(runs, resolved, cwd, out / "data" if reduced else None)
    except (RuntimeError, ValueError) as err:
        sys.exit(f"nem-side-by-side: {err}")
    failed = prepare_data(list({id(f): f for f in files.values()}.values()), out, env)
    per_run = threads_per_run(runs, resolved, threads)
    if deadline is None and minutes is not None:
        deadline = minutes * 60 + STARTUP_SECONDS
    if deadline is None and reduced:
        deadline = 600
    finished = train(runs, out, options, resolved, files, failed, per_run, deadline, cwd)  # 3-4.
    exported = bring_back(runs, out, env, cwd, half)  # 5.
    header = [
        f"# {len(runs)} runs side by side{' (reduced mode)' if reduced else ''}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; CUDA {'available' if resolved.get('cuda') else 'not available'}, "
        f"{resolved.get('cpus')} CPU cores; {time.monotonic() - started:.0f} s in all; options of every run: "
        f"`{shlex.join(options) or 'none'}`",
    ]
    (out / "summary.md").write_text(summarise(runs, finished, out, header, exported, per_run))
    log(f"done in {(time.monotonic() - started) / 60:.1f} minutes; summary in {out / 'summary.md'}")
    return finished, exported


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side runs and write their results; 0 when every run exited 0, else 1."""
    args = parse_args(argv)
    try:
        runs = gather_runs(args)
    except (ValueError, OSError, yaml.YAMLError) as err:
        sys.exit(f"nem-side-by-side: {err}")
    out = empty_out(args.out)
    finished, _ = train_side_by_side(
        runs,
        out,
        minutes=args.minutes,
        val_every=args.val_every,
        threads=args.threads,
        deadline=args.deadline,
        half=args.half,
        reduced=args.reduced,
    )
    return 0 if all(end.returncode == 0 for end in finished.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
