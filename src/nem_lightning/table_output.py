"""What ``nem-table`` writes: the markdown table, the CSV of every cell and the per-step AMI curves.

Everything is built in memory first and then written file by file through ``atomic_path``, so a failure leaves
earlier results as they were.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
from pathlib import Path

import numpy as np

from nem_lightning.figures import ami_per_step_figure, save_png
from nem_lightning.files import atomic_path
from nem_lightning.table import BCE_SPREAD, K_TABLE, MODELS, NEXT_STEP, Cell, Score, k_table_cells

NOT_SHIPPED = "not shipped yet"
COLUMNS = (
    "table",
    "model",
    "column",
    "weights",
    "status",
    "data",
    "split",
    "objects",
    "k",
    "sequences",
    "ami_mean",
    "ami_last",
    "upper_bound_last",
    "poster",
    "poster_spread",
    "ami_per_step",
    "command",
)


def _ami(score: Score | None) -> str:
    return "—" if score is None else f"{score.ami:.3f} / {score.ami_last:.3f}"


def _poster(value: tuple[float, float]) -> str:
    return f"{value[0]:.3f} ± {value[1]:.3f}"


def _weights(name: str, scored: bool) -> str:
    return f"`{name}`" if scored else f"{NOT_SHIPPED} (`{name}`)"


def _row(**values: object) -> dict[str, object]:
    return {name: values.get(name, "") for name in COLUMNS}


def _csv_row(table: str, column: str, cell: Cell, name: str, score: Score | None, poster: tuple) -> dict:
    common = dict(table=table, model=cell.model, column=column, weights=name, split=cell.split)
    common.update(objects=cell.objects, k=cell.k, poster=poster[0], poster_spread=poster[1])
    if score is None:
        return _row(**common, status=NOT_SHIPPED)
    return _row(
        **common,
        status="scored",
        data=score.data,
        sequences=score.sequences,
        ami_mean=repr(score.ami),
        ami_last=repr(score.ami_last),
        upper_bound_last=repr(score.upper_bound_last),
        ami_per_step=" ".join(repr(v) for v in score.ami_per_step),
        command=shlex.join(score.command),
    )


def k_table(names: dict[str, str], scores: dict[Cell, Score], rows: list[dict]) -> list[str]:
    """The K table in markdown; its cells appended to ``rows``."""
    lines = [
        "| trained on (objects, K) | weights | train: poster | train: ours | test: poster | test: ours "
        "| generalisation: poster | generalisation: ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, train, test, general, general_value in K_TABLE:
        model = MODELS[key]
        cells = k_table_cells(key, model.objects, model.k, general)
        got = {column: scores.get(cell) for column, cell in cells.items()}
        posters = {"train": train, "test": test, "generalisation": general_value}
        for column, cell in cells.items():
            rows.append(_csv_row("k_table", column, cell, names[key], got[column], posters[column]))
        same, other = f"{model.objects}, {model.k} → ", f"{general[0]}, {general[1]} → "
        scored = got["test"] is not None
        lines.append(
            f"| {model.objects}, {model.k} | {_weights(names[key], scored)} | {_poster(train)} | {_ami(got['train'])} "
            f"| {same}{_poster(test)} | {same if scored else ''}{_ami(got['test'])} "
            f"| {other}{_poster(general_value)} | {other if scored else ''}{_ami(got['generalisation'])} |"
        )
    return lines


def next_step_table(names: dict[str, str], scores: dict[Cell, Score], rows: list[dict]) -> list[str]:
    """The next-step table in markdown; its cells appended to ``rows``."""
    lines = [
        "| shapes | RNN-EM: poster | RNN-EM: ours | RNN-EM weights (objects, K) "
        "| recurrent AE (K = 1): poster | recurrent AE: ours | recurrent AE weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for objects, nem, nem_value, rnn, rnn_value in NEXT_STEP:
        parts = [str(objects)]
        for key, value, column in ((nem, nem_value, "rnn_em"), (rnn, rnn_value, "recurrent_ae")):
            cell = Cell(key, "test", objects, MODELS[key].k)
            score = scores.get(cell)
            rows.append(_csv_row("next_step", column, cell, names[key], score, (value, BCE_SPREAD)))
            ours = "—" if score is None else f"{score.upper_bound_last:.1f}"
            trained = f"{MODELS[key].objects}, {MODELS[key].k}: " if column == "rnn_em" else ""
            parts += [f"≈ {value:.0f}", ours, trained + _weights(names[key], score is not None)]
        lines.append("| " + " | ".join(parts) + " |")
    return lines


def header(scores: dict[Cell, Score], args: argparse.Namespace) -> list[str]:
    """What was scored: the splits, the number of sequences, the data files and the precision."""
    counts = sorted({s.sequences for s in scores.values()})
    if not scores:
        scored = "No weights file was found, so nothing was scored."
    elif len(counts) == 1:
        scored = f"Each of our cells scored {counts[0]:,} sequences"
        scored += f" (the first of the split, `--sequences {args.sequences}`)." if args.sequences else "."
    else:
        scored = f"Our cells scored {counts[0]:,} to {counts[-1]:,} sequences each (see table.csv)."
    data = ", ".join(f"`{d}`" for d in sorted({s.data for s in scores.values()})) or "none"
    precision = f"`{args.precision}`" if args.precision else "the configs' `trainer.precision`"
    return [
        "# Flying shapes: the poster's K table and next-step error, rescored",
        "",
        "Each of our cells is `nem test` of the row's weights (the command of every cell is in table.csv). "
        "AMI is given as the mean over the EM steps / the last step (`test/ami` with `--eval.score_steps all` / "
        "`test/ami_last`); the poster prints one AMI per cell (± spread) without saying which. The train column "
        "scores the **training split** (`--data.test_split training`), the test and generalisation columns the "
        "test split; generalisation evaluates with the K it names (`--eval.k`). "
        f"{scored} Data: {data}. Precision: {precision}.",
        "",
    ]


def curves(scores: dict[Cell, Score], names: dict[str, str]) -> dict[str, np.ndarray]:
    """One per-step AMI figure per scored model with K > 1, by file name."""
    pictures = {}
    for key, model in MODELS.items():
        scored = [(cell, s) for cell, s in scores.items() if cell.model == key and s.ami_per_step]
        if model.k == 1 or not scored:
            continue  # one component: every pixel is in one group, and AMI says nothing
        labelled = {}
        for cell, s in scored:
            same = (cell.objects, cell.k) == (model.objects, model.k)
            column = "train" if cell.split == "training" else "test" if same else "generalisation"
            labelled[f"{column}: {cell.objects} objects, K={cell.k}"] = s.ami_per_step
        title = f"{Path(names[key]).name} (trained on {model.objects} objects, K={model.k})"
        pictures[f"ami_per_step_{model.objects}obj_k{model.k}.png"] = ami_per_step_figure(labelled, title)
    return pictures


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8", newline="") as f:
        f.write(text)


def write_results(out: Path, names: dict[str, str], scores: dict[Cell, Score], args: argparse.Namespace) -> str:
    """Write table.md, table.csv and the curves into ``out``; return the markdown."""
    rows: list[dict] = []
    lines = header(scores, args)
    lines += ["## Effect of K (RNN-EM, AMI)", "", *k_table(names, scores, rows), ""]
    lines += [
        "## Next-step prediction (binomial cross-entropy, `test/upper_bound_last`)",
        "",
        *next_step_table(names, scores, rows),
        "",
        "The poster's bars are read off to about ±1. Ours: the last EM step's upper-bound loss against the next "
        "clean frame, summed over the pixels and averaged over the sequences (docs/next_step_prediction.md).",
    ]
    markdown = "\n".join(lines) + "\n"
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    pictures = curves(scores, names)
    for name, picture in pictures.items():
        save_png(picture, out / name)
    _write_text(out / "table.csv", table.getvalue())
    _write_text(out / "table.md", markdown)
    return markdown
