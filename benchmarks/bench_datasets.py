"""Time `generate_dataset` at the default sizes (50,000 / 10,000 / 10,000; 21 frames).

    python benchmarks/bench_datasets.py                      # all timed datasets, print seconds
    python benchmarks/bench_datasets.py shapes --append      # also append the figures to RESULTS.md
    python benchmarks/bench_datasets.py --machine "8-core CPU" --append

Files go to a temporary folder (``--dir``, default the system one) and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from nem_lightning.generators import DATASET_NAMES, generate_dataset

# The medium MNIST variants cost the same as flying_mnist_2, and flying_shapes_4 lies between 3 and 5.
TIMED = ("shapes", "flying_shapes_3", "flying_shapes_5", "flying_mnist_2", "flying_mnist_3")
RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Dataset generation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"datasets to time (default: {' '.join(TIMED)})")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--machine", default="2-core CPU", help="machine description for RESULTS.md")
    parser.add_argument("--append", action="store_true", help=f"append the figures to {RESULTS.name}")
    args = parser.parse_args()
    # Checked here, not with `choices`: argparse would test the list default itself against the choices.
    unknown = sorted(set(args.names) - set(DATASET_NAMES))
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; valid: {', '.join(DATASET_NAMES)}")
    args.names = args.names or list(TIMED)

    load = os.getloadavg()[0]  # other jobs on the machine slow the figures down
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name in args.names:
            path = Path(tmp) / f"{name}.h5"
            start = time.perf_counter()
            generate_dataset(name, path, seed=args.seed, progress=False)
            seconds = time.perf_counter() - start
            megabytes = path.stat().st_size / 1e6
            path.unlink()
            print(f"{name:26s} {seconds:7.1f} s  {megabytes:8.1f} MB", flush=True)
            rows.append(f"| {name} | {seconds:.1f} | {megabytes:.0f} |")

    if args.append:
        # The temporary folder is left out of the record: it changes nothing but where files go.
        argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--dir" and (i == 0 or sys.argv[i] != "--dir")]
        command = shlex.join(["python", "benchmarks/bench_datasets.py", *argv])
        today = datetime.date.today().isoformat()
        lines = [
            "",
            HEADING,
            "",
            f"Machine: {args.machine} (1-minute load average {load:.1f} at start).",
            f"Command: `{command}`. Date: {today}.",
            "Default sizes 50,000 / 10,000 / 10,000, 21 frames for flying data; gzip level 1; wall-clock seconds",
            "including the HDF5 write.",
            "",
            "| dataset | seconds | file MB |",
            "|---|---|---|",
            *rows,
            "",
        ]
        if not RESULTS.exists():
            lines.insert(0, "# Benchmark results")
        # Append, never rewrite: other benchmarks add their own sections to the same file.
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()
