"""After the side-by-side runs: their metrics, last figures and best weights brought back, and summary.md."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from nem_lightning.side_by_side.processes import Finished
from nem_lightning.side_by_side.runs import Run, config_args_with


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
