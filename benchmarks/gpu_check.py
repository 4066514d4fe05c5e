"""One prepared GPU session: install what is missing, generate data, run the CUDA tests and the benchmark,
train flying shapes, score it, and write everything to one folder.

    python benchmarks/gpu_check.py --out gpu_results                 # on a GPU machine: the full check
    python benchmarks/gpu_check.py --out gpu_results --reduced       # anywhere: tiny sizes, a few updates

Without a visible GPU it always runs the reduced mode on the CPU (the test suite runs it that way), so the
same script is exercised before it meets a GPU. The full mode, with the defaults, ends in about 8 minutes:

1. wheels in ``.whl/`` (jsonargparse and its helpers, for images that lack them) are installed into a
   temporary folder when the package cannot import them;
2. the default flying-shapes data (50,000 / 1,000 / 10,000 sequences, the original's 1-pixel motion) and
   the same with this project's earlier 3-pixel motion are generated side by side;
3. the CUDA tests (``pytest -m cuda``) and ``bench_train_step.py --device cuda`` run;
4. ``nem fit --config configs/flying_shapes.yaml`` trains for ``--minutes``, beside ablation runs of the
   early dip (layer-norm epsilon 1e-5 against the original's 1e-12, 1- against 3-pixel motion), each
   validating every ``--val-every`` updates;
5. the flagship's best checkpoint is scored with ``nem test`` on the full test split;
6. ``summary.md`` gets updates per second, the AMI curves and the test scores; the folder holds each run's
   metrics.csv, last overview figure and the flagship's weights (weights only, no optimizer state).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
from side_by_side import child_env as runner_env

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/flying_shapes.yaml"

# name -> (data variant, extra nem fit options); the first is the flagship (the shipped config as it is)
FULL_RUNS = {
    "flagship": ("speed1", []),
    "speed1_eps1e-5": ("speed1", ["--model.layer_norm_eps", "1e-5"]),
    "speed3_eps1e-12": ("speed3", []),
    "speed3_eps1e-5": ("speed3", ["--model.layer_norm_eps", "1e-5"]),
    "flagship_float32": ("speed1", ["--trainer.precision", "32-true"]),
}


@dataclass
class Environment:
    """What the probe of step 1 found: versions, the device, and whether the check runs reduced."""

    torch: str
    lightning: str
    jsonargparse: str
    device: str
    reduced: bool


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def child_env(site: Path | None) -> dict[str, str]:
    """Environment of every child: the package from src/, carried wheels, no W&B, unbuffered output."""
    return runner_env([str(site)] if site else [])


def run(command: list[str], logfile: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run to completion (or ``timeout`` seconds), output into ``logfile``; return the exit status."""
    with open(logfile, "w") as f:
        try:
            return subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[gpu_check] stopped after {timeout:.0f} s\n")
            return 124


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_results"), help="folder for the results")
    parser.add_argument("--minutes", type=float, default=5.5, help="training time of each run (full mode)")
    parser.add_argument("--bench-seconds", type=float, default=90, help="time limit of the compiled benchmark rows")
    parser.add_argument("--val-every", type=int, default=300, help="validate every N updates (full mode)")
    parser.add_argument("--runs", nargs="+", default=list(FULL_RUNS), choices=list(FULL_RUNS), help="runs to train")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes and a few updates (always on CPU)")
    return parser.parse_args(argv)


def results_folder(path: Path) -> Path:
    """``--out``, created; refused when it holds anything, so earlier results are never overwritten."""
    out = path.resolve()
    if out.exists() and any(out.iterdir()):
        sys.exit(f"gpu_check: {out} is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


# 1. wheels


def install_wheels(out: Path) -> Path | None:
    """Install ``.whl/*.whl`` into a new temporary folder when jsonargparse cannot be imported; return it."""
    try:
        import jsonargparse  # noqa: F401

        return None
    except ImportError:
        pass
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        sys.exit("gpu_check: jsonargparse is not installed and no wheels are in .whl/")
    site = Path(tempfile.mkdtemp(prefix="nem_site_"))  # a fresh folder: nothing left from an earlier check
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(site),
        *map(str, wheels),
    ]
    run(command, out / "install.log", timeout=300)
    return site


def probe(env: dict[str, str], reduced: bool) -> Environment:
    """Versions and device as the children see them; the reduced mode when asked for or without a GPU."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, jsonargparse, pytorch_lightning as pl; "
            "print(torch.__version__, pl.__version__, jsonargparse.__version__, torch.cuda.is_available(), "
            "torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if done.returncode:
        sys.exit(f"gpu_check: the environment cannot import what nem needs:\n{done.stderr}")
    torch_version, pl_version, jap_version, cuda, device = done.stdout.split(maxsplit=4)
    found = Environment(torch_version, pl_version, jap_version, device.strip(), reduced or cuda != "True")
    log(
        f"torch {found.torch}, lightning {found.lightning}, jsonargparse {found.jsonargparse}, device {found.device}, "
        f"{'reduced' if found.reduced else 'full'} mode"
    )
    return found


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
    for run in runs:
        end = finished[run.name]
        log(f"fit {run.name}: exit {124 if end.timed_out else end.returncode}")


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = results_folder(args.out)
    started = time.monotonic()
    env = child_env(install_wheels(out))  # 1.
    found = probe(env, args.reduced)
    data = out / "data"
    generators = start_data(out, data, found.reduced, env)  # 2., while 3. runs
    tests_and_benchmark(out, found.reduced, args.bench_seconds, env)  # 3.
    wait_for_data(out, generators)
    runs = training_runs(data, args.runs, found.reduced, args.minutes, args.val_every)
    train_side_by_side(out, runs, found.reduced, args.minutes, env)  # 4.
    scores = score_flagship(out, data, env)  # 5.
    write_summary(out, found, scores, runs)  # 6.
    log(f"done in {(time.monotonic() - started) / 60:.1f} minutes; summary in {out / 'summary.md'}")


if __name__ == "__main__":
    main()
