"""The ``nem-table`` command: the authors' flying-shapes K table and next-step error, rescored from weights files.

    nem-table                                     # the shipped weights/, every sequence of each split, into results/
    nem-table --sequences 1000 --checkpoint 5,3=runs/flying_shapes_5obj_k3/version_0/checkpoints/best-....ckpt

Every cell is one ``nem test`` in process (``nem_lightning.cli.run``) of the row's weights under its config, with
``--trainer.logger false``: the test data by ``--data.path``/``--data.generate``, the generalisation K by
``--eval.k``, and ``--eval.score_steps all``, so ``test/ami`` is the mean over the EM steps and ``test/ami_last``
the last step. The train column scores the training split (``--data.test_split training``); next-step
prediction is ``test/upper_bound_last``. A run scored once serves every cell that shows it.

It writes ``table.md`` (also printed), ``table.csv`` (one row per cell, the equivalent ``nem test`` command
included) and ``ami_per_step_<objects>obj_k<K>.png`` per scored model; each file appears whole or not at all, and
only once every cell is scored. Weights that are missing are "not shipped yet"; a damaged file, or one trained
with another K than its row, stops it before any scoring with one line naming the file (exit status 2).
With ``--train MINUTES`` it first trains the models (all eight, or those ``--train-models`` names) from scratch
under their configs, side by side on this machine's device for MINUTES each (``nem_lightning.side_by_side``: the
data made once, one CSV log, curve and figure per run in ``<out>/training``), then scores each run's best
checkpoint by validation loss in place of its weights file:

    nem-table --train 600 --val-every 500 --train-options "--trainer.precision 32-true"   # a GPU, ten hours each
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nem_lightning.checkpoints import default, read_checkpoint
from nem_lightning.errors import NEMError
from nem_lightning.options import load_config


@dataclass(frozen=True)
class Model:
    """A trained model the table names: its key (``--checkpoint KEY=PATH``), config and weights file."""

    key: str
    config: str  # in the configs folder
    weights: str  # in the weights folder
    objects: int
    k: int


MODELS = {
    m.key: m
    for m in (
        Model("3,3", "flying_shapes.yaml", "flying_shapes.ckpt", 3, 3),
        Model("3,5", "flying_shapes_3obj_k5.yaml", "flying_shapes_3obj_k5.ckpt", 3, 5),
        Model("5,3", "flying_shapes_5obj_k3.yaml", "flying_shapes_5obj_k3.ckpt", 5, 3),
        Model("5,5", "flying_shapes_5.yaml", "flying_shapes_5obj_k5.ckpt", 5, 5),
        Model("4,4", "flying_shapes_4.yaml", "flying_shapes_4obj_k4.ckpt", 4, 4),
        Model("rnn_3", "flying_shapes_rnn.yaml", "flying_shapes_rnn_3obj.ckpt", 3, 1),
        Model("rnn_4", "flying_shapes_rnn_4obj.yaml", "flying_shapes_rnn_4obj.ckpt", 4, 1),
        Model("rnn_5", "flying_shapes_rnn_5obj.yaml", "flying_shapes_rnn_5obj.ckpt", 5, 1),
    )
}
DATA_CONFIG = {3: "flying_shapes.yaml", 4: "flying_shapes_4.yaml", 5: "flying_shapes_5.yaml"}  # data per objects

# The poster's "Effect of Hyperparameter K" (RNN-EM, flying shapes), AMI (value, spread): trained on (objects, K),
# train, test on the same (objects, K), and the generalisation (objects, K) with its value.
K_TABLE = (
    ("3,3", (0.969, 0.006), (0.970, 0.005), (3, 5), (0.972, 0.007)),
    ("3,5", (0.997, 0.001), (0.997, 0.002), (3, 3), (0.914, 0.015)),
    ("5,3", (0.614, 0.003), (0.614, 0.003), (3, 3), (0.886, 0.010)),
    ("5,5", (0.878, 0.003), (0.878, 0.003), (3, 5), (0.981, 0.003)),
)
# The poster's next-step bars ("Binomial Cross-Entropy Error", read off to about ±1): shapes, the RNN-EM model and
# its value, the recurrent autoencoder (K = 1) and its value.
NEXT_STEP = ((3, "3,3", 15.0, "rnn_3", 44.0), (4, "4,4", 31.0, "rnn_4", 69.0), (5, "5,5", 44.0, "rnn_5", 96.0))
BCE_SPREAD = 1.0
SIZE_OPTION = {"training": "train_size", "validation": "val_size", "test": "test_size"}


@dataclass(frozen=True)
class Cell:
    """One scoring run: a model on a split of the data with ``objects`` objects, evaluated with ``k`` components."""

    model: str
    split: str
    objects: int
    k: int


@dataclass
class Score:
    """What one ``nem test`` reports for a cell."""

    ami: float  # test/ami: the mean over the EM steps
    ami_last: float  # test/ami_last
    upper_bound_last: float  # test/upper_bound_last: the next-step BCE
    ami_per_step: list[float]
    sequences: int
    data: str
    command: list[str] = field(default_factory=list)


def k_table_cells(key: str, objects: int, k: int, general: tuple[int, int]) -> dict[str, Cell]:
    """The train, test and generalisation cells of a K-table row."""
    return {
        "train": Cell(key, "training", objects, k),
        "test": Cell(key, "test", objects, k),
        "generalisation": Cell(key, "test", *general),
    }


def planned_cells() -> list[Cell]:
    """Every cell of both tables, once each, in the order of the tables."""
    cells = []
    for key, _, _, general, _ in K_TABLE:
        model = MODELS[key]
        cells += k_table_cells(key, model.objects, model.k, general).values()
    for objects, nem, _, rnn, _ in NEXT_STEP:
        cells += [Cell(nem, "test", objects, MODELS[nem].k), Cell(rnn, "test", objects, 1)]
    return list(dict.fromkeys(cells))


def weights_files(weights: Path, named: list[str]) -> dict[str, tuple[Path, str]]:
    """Each model's weights file and how it was named (``--checkpoint KEY`` or the weights folder)."""
    chosen = {key: (weights / model.weights, "weights file") for key, model in MODELS.items()}
    for item in named:
        key, sep, path = item.partition("=")
        if not sep or not path or key not in MODELS:
            raise NEMError(f"--checkpoint {item!r}: expected CELL=PATH with CELL one of {', '.join(MODELS)}")
        chosen[key] = (Path(path), f"--checkpoint {key}")
    return chosen


def train_keys(text: str, named: list[str]) -> list[str]:
    """The models ``--train-models`` names (space-separated keys), refusing unknown keys and ``--checkpoint`` ones."""
    keys = list(dict.fromkeys(text.split()))
    unknown = [key for key in keys if key not in MODELS]
    if unknown or not keys:
        raise NEMError(f"--train-models {text!r}: expected keys among {' '.join(MODELS)}")
    both = [key for key in keys if any(item.partition("=")[0] == key for item in named)]
    if both:
        raise NEMError(f"{' '.join(both)}: both --checkpoint and --train name it; drop one")
    return keys


def check_weights(key: str, path: Path, option: str) -> None:
    """Refuse a weights file that is not a readable checkpoint or was trained with another K than its row."""
    hp = read_checkpoint(str(path), option).get("hyper_parameters") or {}
    trained = hp.get("k", default("k"))
    if trained != MODELS[key].k:
        raise NEMError(f"{option} {str(path)!r} was trained with K={trained}, but {key} is a K={MODELS[key].k} model")


def data_options(configs: Path, objects: int, data_dir: Path | None) -> tuple[str, str]:
    """(data.path, data.generate) of the data with ``objects`` objects, from the config of that data."""
    data = load_config(configs / DATA_CONFIG[objects]).get("data") or {}
    generate = data.get("generate")
    path = data.get("path") or f"data/{generate}.h5"
    return (str(data_dir / Path(path).name) if data_dir else str(path)), str(generate)


def held(path: str, split: str) -> int | None:
    """How many sequences a split of a data file holds; None while the file does not exist yet."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f[split]["features"].shape[1])
    except (OSError, KeyError):
        return None


def score(cell: Cell, weights: Path, configs: Path, args: argparse.Namespace) -> Score:
    """Run ``nem test`` for one cell in process and read its metrics."""
    from nem_lightning.cli import run

    model = MODELS[cell.model]
    path, generate = data_options(configs, cell.objects, args.data_dir)
    command = ["test", "--config", str(configs / model.config), "--ckpt_path", str(weights)]
    command += ["--trainer.logger", "false", "--data.path", path, "--data.generate", generate]
    if cell.split != "test":
        command += ["--data.test_split", cell.split]
    if cell.k != model.k:
        command += ["--eval.k", str(cell.k)]
    command += ["--eval.score_steps", "all"]
    if args.sequences is not None:
        available = held(path, cell.split)
        sequences = args.sequences if available is None else min(args.sequences, available)
        command += [f"--data.{SIZE_OPTION[cell.split]}", str(sequences)]
    if args.precision:
        command += ["--trainer.precision", args.precision]
    if args.num_workers is not None:
        command += ["--data.num_workers", str(args.num_workers)]
    print(f"nem-table: {cell.model} on {cell.split} of {path}, K={cell.k}", file=sys.stderr, flush=True)
    cli = run([*command, "--verbose", "false"])
    metrics = cli.trainer.callback_metrics
    curve = cli.model.test_ami_per_step
    result = Score(
        ami=float(metrics["test/ami"]),
        ami_last=float(metrics["test/ami_last"]),
        upper_bound_last=float(metrics["test/upper_bound_last"]),
        ami_per_step=[] if curve is None else [float(v) for v in curve],
        sequences=len(cli.datamodule.dataset(cell.split)),
        data=path,
        command=["nem", *command],
    )
    ami = f"AMI {result.ami:.4f} (mean over steps), {result.ami_last:.4f} (last step), " if cell.k > 1 else ""
    bound = f"upper_bound_last {result.upper_bound_last:.2f}"
    print(f"nem-table: {cell.model} {cell.split} K={cell.k}: {ami}{bound}", file=sys.stderr, flush=True)
    return result


def train_models(keys: list[str], configs: Path, args: argparse.Namespace) -> dict[str, tuple[Path, str]]:
    """Train ``keys`` side by side into ``<out>/training``; each model's exported best weights and option.

    A run that ends without a best checkpoint is said so, and its row reads "not shipped yet": the shipped weights
    file is never scored in its place.
    """
    from nem_lightning.side_by_side import Run, train_side_by_side

    folder = args.out / "training"
    if folder.exists() and any(folder.iterdir()):
        raise NEMError(f"--train: {folder} already holds a training; choose another --out (runs are never overwritten)")
    folder.mkdir(parents=True, exist_ok=True)
    options = shlex.split(args.train_options or "")
    runs = []
    for key in keys:
        model = MODELS[key]
        data = ["--data.path", data_options(configs, model.objects, args.data_dir)[0]] if args.data_dir else []
        runs.append(Run(Path(model.weights).stem, [str(configs / model.config)], [*data, *options]))
    finished, exported = train_side_by_side(runs, folder, minutes=args.train, val_every=args.val_every)
    trained = {}
    for key, run in zip(keys, runs):
        trained[key] = (folder / f"{run.name}.ckpt", f"--train {key}" if run.name in exported else "weights file")
        if run.name not in exported:  # never the shipped file in its place: the row reads "not shipped yet"
            end = finished.get(run.name)
            status = "not started" if end is None or end.returncode is None else f"exit status {end.returncode}"
            print(
                f"nem-table: {key}: training gave no checkpoint ({status}; see {folder / f'fit_{run.name}.log'})",
                file=sys.stderr,
            )
    return trained


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nem-table",
        description="Rescore the authors' flying-shapes K table and next-step error from weights files, beside the "
        "poster's numbers: table.md, table.csv and per-step AMI curves.",
    )
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="folder of the weights files")
    parser.add_argument("--configs", type=Path, default=Path("configs"), help="folder of the experiment configs")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="CELL=PATH",
        help=f"score this checkpoint for a model instead of its weights file; CELL is one of {', '.join(MODELS)} "
        "(trained objects,K or rnn_<objects>); repeatable",
    )
    parser.add_argument("--sequences", type=int, default=None, help="score the first N sequences of each split")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for table.md, table.csv, figures")
    parser.add_argument("--precision", default=None, help="--trainer.precision of every run (default: the configs')")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder holding the configs' data files")
    parser.add_argument("--num-workers", type=int, default=None, help="--data.num_workers (default: the configs')")
    parser.add_argument(
        "--train",
        type=float,
        default=None,
        metavar="MINUTES",
        help="first train the models from scratch, side by side on this machine, MINUTES each, and score those",
    )
    parser.add_argument(
        "--train-models",
        default=" ".join(MODELS),
        metavar="KEYS",
        help=f"with --train: the models to train, separated by spaces (default: all: {' '.join(MODELS)})",
    )
    parser.add_argument("--val-every", type=int, default=None, help="with --train: validate every N updates")
    parser.add_argument(
        "--train-options",
        default=None,
        help='with --train: more nem fit options for every run, e.g. "--seed_everything 1"',
    )
    args = parser.parse_args(argv)
    if args.sequences is not None and args.sequences < 1:
        parser.error(f"--sequences must be at least 1, got {args.sequences}")
    if args.train is not None and args.train <= 0:
        parser.error(f"--train must be a positive number of minutes, got {args.train:g}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``nem-table``."""
    from nem_lightning.table_output import write_results

    args = parse(argv)
    try:
        chosen = weights_files(args.weights, args.checkpoint)
        if args.train is not None:
            keys = train_keys(args.train_models, args.checkpoint)
            chosen.update(train_models(keys, args.configs, args))
        present = {}
        for key, (path, option) in chosen.items():
            if option != "weights file" or path.exists():  # named, trained, or shipped
                check_weights(key, path, option)
                present[key] = path
        cells = [cell for cell in planned_cells() if cell.model in present]
        scores = {cell: score(cell, present[cell.model], args.configs, args) for cell in cells}
        markdown = write_results(args.out, {key: str(path) for key, (path, _) in chosen.items()}, scores, args)
    except NEMError as err:
        print(f"nem-table: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(markdown)
    print(f"nem-table: wrote {args.out / 'table.md'}, {args.out / 'table.csv'} and the curves", file=sys.stderr)


if __name__ == "__main__":
    main()
