"""Per-step AMI curves of `nem test` runs beside the poster's flying-MNIST curve: the figure of docs/flying_mnist.md.

    nem test --config configs/flying_mnist.yaml --ckpt_path weights/flying_mnist.ckpt --data.generate null \
        --data.path data/flying_mnist_2_medium20_speed1_41frames.h5 --eval.steps 40 --data.test_size 500
    python docs/analysis/per_step.py --out ami_per_step.png \
        "stage 3=runs/<run>/version_N/figures/test_ami_per_step.csv" "stage 2=<another run's csv>"

Each LABEL=CSV names a `test_ami_per_step.csv` (columns step, ami) written by `nem test`. The poster's points are
those of nem-reference §5 (a model trained on 20 steps and unrolled to 50, read off the figure); `--no-poster`
leaves them out.
"""

from __future__ import annotations

import argparse
import csv
import sys

from nem_lightning.errors import DataError
from nem_lightning.figures import ami_per_step_figure, save_png

POSTER_FLYING_MNIST = {5: 0.42, 10: 0.68, 15: 0.80, 20: 0.84, 25: 0.87, 40: 0.89, 50: 0.89}


def read_curve(path: str) -> list[float]:
    """AMI by step from a `test_ami_per_step.csv`, checking that the steps run 1..T."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        steps = [int(row["step"]) for row in rows]
        values = [float(row["ami"]) for row in rows]
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: expected a test_ami_per_step.csv with columns step, ami ({err})") from err
    if not steps or steps != list(range(1, len(steps) + 1)):
        raise DataError(f"{path}: expected steps 1..T in order, found {steps[:5]}...")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", metavar="LABEL=CSV", help="a legend label and its per-step csv")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="flying MNIST, 2 digits: AMI per EM step")
    parser.add_argument("--no-poster", action="store_true", help="leave out the poster's points")
    args = parser.parse_args(argv)
    curves = {}
    try:
        for item in args.curves:
            label, sep, path = item.partition("=")
            if not sep or not label or not path:
                parser.error(f"expected LABEL=CSV, got {item!r}")
            curves[label] = read_curve(path)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reference = None if args.no_poster else POSTER_FLYING_MNIST
    save_png(ami_per_step_figure(curves, args.title, reference=reference, reference_label="poster"), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
