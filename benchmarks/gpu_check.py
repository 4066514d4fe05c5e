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
import sys
import time
from pathlib import Path

from gpu_check_setup import child_env, install_wheels, log, probe
from gpu_check_steps import (
    FULL_RUNS,
    score_flagship,
    start_data,
    tests_and_benchmark,
    train_side_by_side,
    training_runs,
    wait_for_data,
    write_summary,
)


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
