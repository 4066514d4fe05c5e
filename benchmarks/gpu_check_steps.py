"""Steps 2 to 6 of the GPU session: data, CUDA tests and benchmark, training runs side by side, the
flagship's test scores, and summary.md."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gpu_check_setup import ROOT, Environment, log, run

# the side-by-side runner beside this script: how the training runs of step 4 are started, waited for and read
from side_by_side import (
    Run,
    best_checkpoint,
    collect,
    curve,
    export_weights,
    fit_command,
    max_time,
    read_metrics,
    start,
    updates_done,
    wait_all,
)

CONFIG = "configs/flying_shapes.yaml"

# name -> (data variant, extra nem fit options); the first is the flagship (the shipped config as it is)
FULL_RUNS = {
    "flagship": ("speed1", []),
    "speed1_eps1e-5": ("speed1", ["--model.layer_norm_eps", "1e-5"]),
    "speed3_eps1e-12": ("speed3", []),
    "speed3_eps1e-5": ("speed3", ["--model.layer_norm_eps", "1e-5"]),
    "flagship_float32": ("speed1", ["--trainer.precision", "32-true"]),
}


# 2. data


def start_data(out: Path, data: Path, reduced: bool, env: dict[str, str]) -> dict[str, subprocess.Popen]:
    """Start generating the flying-shapes variants, side by side; they run while the tests and the benchmark do."""
    data.mkdir()
    sizes = (
        ["--train", "64", "--val", "16", "--test", "16"]
        if reduced
        else ["--train", "50000", "--val", "1000", "--test", "10000"]
    )
    # the generator's default speed is 3 px/frame: the original's 1 px/frame must be asked for
    variants = {"speed1": ["--max-speed", "1"], "speed3": ["--max-speed", "3"]}
    if reduced:
        variants = {"speed1": variants["speed1"]}
    return {
        name: start(
            [
                sys.executable,
                "-m",
                "nem_lightning.generators.command",
                "flying-shapes",
                *sizes,
                *extra,
                "--no-progress",
                "--out",
                str(data / f"flying_shapes_3_{name}.h5"),
            ],
            out / f"data_{name}.log",
            env,
            ROOT,
        )
        for name, extra in variants.items()
    }


def wait_for_data(out: Path, generators: dict[str, subprocess.Popen]) -> None:
    """Wait for the data (10 minutes at most); stop the check if any file could not be made."""
    finished = wait_all(generators, time.monotonic() + 600)
    for name in generators:
        status = 124 if finished[name].timed_out else finished[name].returncode
        log(f"data {name}: exit {status}")
        if status:
            sys.exit(f"gpu_check: generating {name} failed; see {out / f'data_{name}.log'}")


# 3. CUDA tests and the benchmark


def tests_and_benchmark(out: Path, reduced: bool, bench_seconds: float, env: dict[str, str]) -> None:
    """The CUDA tests and the eager and compiled benchmark on a GPU; one small eager benchmark row otherwise."""
    python = sys.executable
    if not reduced:
        status = run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests"],
            out / "cuda_tests.log",
            timeout=120,
            env=env,
        )
        log(f"CUDA tests: exit {status}")
        bench = [
            python,
            "benchmarks/bench_train_step.py",
            "--device",
            "cuda",
            "--recipes",
            "flying_shapes",
            "--repeats",
            "10",
        ]
        status = run([*bench, "--modes", "eager"], out / "bench_eager.log", timeout=120, env=env)
        log(f"benchmark, eager: exit {status}")
        # compilation takes a minute or more per row: whatever finishes within the limit is reported
        compiled = [*bench, "--precisions", "bf16", "--modes", "reduce-overhead", "compiled"]
        status = run(compiled, out / "bench_compiled.log", timeout=bench_seconds, env=env)
    else:
        bench = [
            python,
            "benchmarks/bench_train_step.py",
            "--recipes",
            "shapes",
            "--threads",
            "1",
            "--precisions",
            "float32",
            "--modes",
            "eager",
            "--repeats",
            "1",
            "--warmup",
            "0",
        ]
        status = run(bench, out / "bench.log", timeout=300, env=env)
    log(f"benchmark: exit {status}")


# 4. training runs, side by side


def training_runs(data: Path, names: list[str], reduced: bool, minutes: float, val_every: int) -> list[Run]:
    """The runs of step 4 on the data of step 2: the flagship alone when reduced, else those asked for."""
    chosen = ["flagship"] if reduced else names
    limit = (
        [
            "--trainer.max_steps",
            "3",
            "--data.batch_size",
            "8",
            "--data.val_size",
            "16",
            "--trainer.val_check_interval",
            "3",
            "--data.num_workers",
            "0",
        ]
        if reduced
        else [
            "--trainer.max_time",
            max_time(minutes),
            "--trainer.val_check_interval",
            str(val_every),
            "--data.num_workers",
            "2",
        ]
    )
    runs = []
    for name in chosen:
        variant, extra = FULL_RUNS[name]
        # the data is made in step 2, so no run generates it (two runs would write the same file)
        data_options = ["--data.path", str(data / f"flying_shapes_3_{variant}.h5"), "--data.generate", "null"]
        runs.append(Run(name, [CONFIG], [*data_options, *limit, *extra]))
    return runs


def train_side_by_side(out: Path, runs: list[Run], reduced: bool, minutes: float, env: dict[str, str]) -> None:
    """Start every run at once and wait for them, with a deadline (the runs' time plus start-up and validation)."""
    processes = {
        run.name: start(fit_command(run, out / "runs"), out / f"fit_{run.name}.log", env, ROOT) for run in runs
    }
    deadline = time.monotonic() + (600 if reduced else minutes * 60 + 180)
    finished = wait_all(processes, deadline)
    for training in runs:
        end = finished[training.name]
        log(f"fit {training.name}: exit {124 if end.timed_out else end.returncode}")


# 5. score


def score_flagship(out: Path, data: Path, env: dict[str, str]) -> list[str]:
    """``nem test`` of the flagship's best checkpoint on the test split, and its weights exported; summary lines."""
    best = best_checkpoint(out / "runs" / "flagship" / "version_0")
    if best is None:
        return []
    test_log = out / "test_flagship.log"
    status = run(
        [
            sys.executable,
            "-m",
            "nem_lightning.cli",
            "test",
            "--config",
            CONFIG,
            "--ckpt_path",
            str(best),
            "--data.path",
            str(data / "flying_shapes_3_speed1.h5"),
            "--data.generate",
            "null",
            "--trainer.logger",
            "false",
        ],
        test_log,
        timeout=600,
        env=env,
    )
    log(f"test flagship: exit {status}")
    export_weights({"flagship": (best, out / "flying_shapes_flagship.ckpt")}, out / "export.log", env, ROOT)
    return [
        f"flagship best checkpoint {best.name}; `nem test` exit {status}:",
        "",
        "```",
        *[line for line in test_log.read_text().splitlines() if "test/" in line],
        "```",
        "",
    ]


# 6. summary


def run_summary(out: Path, name: str) -> list[str]:
    """One run's part of summary.md (updates, updates per second, AMI curve); its metrics and figure copied."""
    version = out / "runs" / name / "version_0"
    rows = read_metrics(version / "metrics.csv")
    points = curve(rows)
    train_minutes = max((p["minutes"] for p in points), default=float("nan"))
    lines = [f"## {name}", ""]
    if updates_done(rows) and points:
        lines.append(f"{updates_done(rows)} updates in {train_minutes:.2f} minutes (validation included)")
    if len(points) >= 2:  # between the first and the last validation: start-up excluded
        first, last = points[0], points[-1]
        rate = (last["update"] - first["update"]) / ((last["minutes"] - first["minutes"]) * 60)
        lines.append(f"{rate:.2f} updates/s between updates {first['update']:.0f} and {last['update']:.0f}")
    lines += [
        "",
        "| update | minutes | val AMI | val AMI last step | confidence | val loss |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['update']:.0f} | {p['minutes']:.2f} | {p['ami']:.3f} | {p['ami_last']:.3f} | "
        f"{p['confidence']:.3f} | {p['loss']:.0f} |"
        for p in points
    ]
    collect(name, version, out)  # metrics_<name>.csv and figure_<name>.png
    return [*lines, ""]


def write_summary(out: Path, found: Environment, scores: list[str], runs: list[Run]) -> None:
    """summary.md: the environment, the flagship's test scores, then each run's curve."""
    summary = [
        f"# gpu_check ({'reduced' if found.reduced else 'full'} mode)",
        "",
        f"torch {found.torch}, lightning {found.lightning}, device {found.device}",
        "",
        *scores,
    ]
    for training in runs:
        summary += run_summary(out, training.name)
    (out / "summary.md").write_text("\n".join(summary) + "\n")
