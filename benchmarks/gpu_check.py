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
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def child_env(site: Path | None) -> dict[str, str]:
    """Environment of every child: the package from src/, carried wheels, no W&B, unbuffered output."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    paths = [str(ROOT / "src")] + ([str(site)] if site else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def install_wheels(out: Path) -> Path | None:
    """Install ``.whl/*.whl`` into a temporary folder when jsonargparse cannot be imported; return it."""
    try:
        import jsonargparse  # noqa: F401

        return None
    except ImportError:
        pass
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        sys.exit("gpu_check: jsonargparse is not installed and no wheels are in .whl/")
    site = Path("/tmp/nem_site")
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


def start(command: list[str], logfile: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=open(logfile, "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def wait(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        process.kill()
        return 124


def read_metrics(path: Path) -> list[dict[str, str]]:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_results"), help="folder for the results")
    parser.add_argument("--minutes", type=float, default=5.5, help="training time of each run (full mode)")
    parser.add_argument("--bench-seconds", type=float, default=90, help="time limit of the compiled benchmark rows")
    parser.add_argument("--val-every", type=int, default=300, help="validate every N updates (full mode)")
    parser.add_argument("--runs", nargs="+", default=list(FULL_RUNS), choices=list(FULL_RUNS), help="runs to train")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes and a few updates (always on CPU)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        sys.exit(f"gpu_check: {out} is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    site = install_wheels(out)
    env = child_env(site)
    probe = subprocess.run(
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
    if probe.returncode:
        sys.exit(f"gpu_check: the environment cannot import what nem needs:\n{probe.stderr}")
    torch_version, pl_version, jap_version, cuda, device = probe.stdout.split(maxsplit=4)
    reduced = args.reduced or cuda != "True"
    log(
        f"torch {torch_version}, lightning {pl_version}, jsonargparse {jap_version}, device {device.strip()}, "
        f"{'reduced' if reduced else 'full'} mode"
    )
    python = sys.executable
    data = out / "data"
    data.mkdir()

    # 2. data, generated while the tests and the benchmark run
    sizes = (
        ["--train", "64", "--val", "16", "--test", "16"]
        if reduced
        else ["--train", "50000", "--val", "1000", "--test", "10000"]
    )
    # the generator's default speed is 3 px/frame: the original's 1 px/frame must be asked for
    variants = {"speed1": ["--max-speed", "1"], "speed3": ["--max-speed", "3"]}
    if reduced:
        variants = {"speed1": variants["speed1"]}
    generators = {
        name: start(
            [
                python,
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
        )
        for name, extra in variants.items()
    }

    # 3. CUDA tests, then the benchmark
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
        status = run(compiled, out / "bench_compiled.log", timeout=args.bench_seconds, env=env)
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
    for name, process in generators.items():
        status = wait(process, 600)
        log(f"data {name}: exit {status}")
        if status:
            sys.exit(f"gpu_check: generating {name} failed; see {out / f'data_{name}.log'}")

    # 4. training runs, side by side
    runs = {"flagship": FULL_RUNS["flagship"]} if reduced else {name: FULL_RUNS[name] for name in args.runs}
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
            f"00:00:{int(args.minutes):02d}:{int(args.minutes % 1 * 60):02d}",
            "--trainer.val_check_interval",
            str(args.val_every),
            "--data.num_workers",
            "2",
        ]
    )
    processes = {}
    for name, (variant, extra) in runs.items():
        logger = json.dumps(
            {
                "class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(out / "runs"), "name": name, "version": 0},
            }
        )
        command = [
            python,
            "-m",
            "nem_lightning.cli",
            "fit",
            "--config",
            CONFIG,
            "--data.path",
            str(data / f"flying_shapes_3_{variant}.h5"),
            "--data.generate",
            "null",
            "--trainer.logger",
            logger,
            *limit,
            *extra,
        ]
        processes[name] = start(command, out / f"fit_{name}.log", env)
    deadline = time.monotonic() + (600 if reduced else args.minutes * 60 + 180)  # start-up and last validation
    for name, process in processes.items():
        log(f"fit {name}: exit {wait(process, deadline - time.monotonic())}")

    # 5. score the flagship's best checkpoint on the test split
    checkpoints = sorted((out / "runs" / "flagship" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    summary = [
        f"# gpu_check ({'reduced' if reduced else 'full'} mode)",
        "",
        f"torch {torch_version}, lightning {pl_version}, device {device.strip()}",
        "",
    ]
    if checkpoints:
        best = checkpoints[-1]
        test_log = out / "test_flagship.log"
        status = run(
            [
                python,
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
        export = [python, "-m", "nem_lightning.checkpoints", str(best), str(out / "flying_shapes_flagship.ckpt")]
        run(export, out / "export.log", 120, env)
        summary += [
            f"flagship best checkpoint {best.name}; `nem test` exit {status}:",
            "",
            "```",
            *[line for line in test_log.read_text().splitlines() if "test/" in line],
            "```",
            "",
        ]

    # 6. summary, curves and figures
    for name in runs:
        version = out / "runs" / name / "version_0"
        rows = read_metrics(version / "metrics.csv")
        points = curve(rows)
        steps = [float(r["step"]) for r in rows if r.get("step")]
        train_minutes = max((p["minutes"] for p in points), default=float("nan"))
        summary += [f"## {name}", ""]
        if steps and points:
            summary.append(f"{int(max(steps)) + 1} updates in {train_minutes:.2f} minutes (validation included)")
        if len(points) >= 2:  # between the first and the last validation: start-up excluded
            first, last = points[0], points[-1]
            rate = (last["update"] - first["update"]) / ((last["minutes"] - first["minutes"]) * 60)
            summary.append(f"{rate:.2f} updates/s between updates {first['update']:.0f} and {last['update']:.0f}")
        summary += [
            "",
            "| update | minutes | val AMI | val AMI last step | confidence | val loss |",
            "|---|---|---|---|---|---|",
        ]
        summary += [
            f"| {p['update']:.0f} | {p['minutes']:.2f} | {p['ami']:.3f} | {p['ami_last']:.3f} | "
            f"{p['confidence']:.3f} | {p['loss']:.0f} |"
            for p in points
        ]
        summary.append("")
        if (version / "metrics.csv").is_file():
            shutil.copy(version / "metrics.csv", out / f"metrics_{name}.csv")
        figures = sorted((version / "figures").glob("*sample0.png"))
        if figures:
            shutil.copy(figures[-1], out / f"figure_{name}.png")
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    log(f"done in {(time.monotonic() - started) / 60:.1f} minutes; summary in {out / 'summary.md'}")


if __name__ == "__main__":
    main()
