"""nem-table: the poster's flying-shapes tables rescored by `nem test`, at tiny size."""

import csv
import shutil

import h5py
import pytest
from PIL import Image

from helpers import CONFIGS, fit_args, test_args
from nem_lightning.cli import run
from nem_lightning.generators import generate_dataset
from nem_lightning.options import load_config
from nem_lightning.table import DATA_CONFIG, MODELS, main

SEQUENCES = 6  # of the 8 in each tiny split
FAST = ["--trainer.precision", "32-true", "--data.num_workers", "0"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Tiny 3- and 5-object files named as the configs name theirs, for --data-dir."""
    folder = tmp_path_factory.mktemp("table_data")
    for name in ("flying_shapes_3", "flying_shapes_5"):
        generate_dataset(name, folder / f"{name}.h5", sizes=(8, 8, 8), frames=6, progress=False)
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    """A 3-object, K = 3 flying-shapes model of 3 EM steps, trained two updates."""
    out = tmp_path_factory.mktemp("table_fit")
    run(fit_args("flying_shapes.yaml", str(tiny_data / "flying_shapes_3.h5"), out, *FAST, batch_size=8, workers=0))
    return str(next(out.glob("flying_shapes/version_0/checkpoints/last.ckpt")))


def _nem_test(path, ckpt, *extra):
    metrics = run(
        test_args(str(path), ckpt, "--data.test_size", str(SEQUENCES), *FAST, *extra, config="flying_shapes.yaml")
    )
    metrics = metrics.trainer.callback_metrics
    return {name: float(metrics[f"test/{name}"]) for name in ("ami", "ami_last", "upper_bound_last")}


def _table(tmp_path, *extra):
    out = tmp_path / "results"
    empty = tmp_path / "no_weights"
    empty.mkdir(parents=True)
    main(["--weights", str(empty), "--configs", str(CONFIGS), "--out", str(out), *extra])
    return out


def test_the_table_holds_what_nem_test_reports_beside_the_poster(tiny_data, tiny_checkpoint, tmp_path, capsys):
    """Each cell equals an independent `nem test` of the same checkpoint and data; rows without weights say so."""
    out = _table(
        tmp_path,
        *("--checkpoint", f"3,3={tiny_checkpoint}", "--checkpoint", f"5,3={tiny_checkpoint}"),
        *("--data-dir", str(tiny_data), "--sequences", str(SEQUENCES), "--precision", "32-true", "--num-workers", "0"),
    )
    printed = capsys.readouterr().out
    markdown = (out / "table.md").read_text()
    assert markdown.strip() in printed
    rows = {(r["table"], r["model"], r["column"]): r for r in csv.DictReader((out / "table.csv").open())}

    three, five = tiny_data / "flying_shapes_3.h5", tiny_data / "flying_shapes_5.h5"
    trained_as_test = tmp_path / "training_as_test.h5"  # the training split under the name test
    shutil.copy(three, trained_as_test)
    with h5py.File(trained_as_test, "a") as f:
        del f["test"]
        f.move("training", "test")
    expected = {
        ("k_table", "3,3", "test"): _nem_test(three, tiny_checkpoint),
        ("k_table", "3,3", "generalisation"): _nem_test(three, tiny_checkpoint, "--eval.k", "5"),
        ("k_table", "3,3", "train"): _nem_test(trained_as_test, tiny_checkpoint),
        ("k_table", "5,3", "test"): _nem_test(five, tiny_checkpoint),
    }
    assert expected[("k_table", "3,3", "train")] != expected[("k_table", "3,3", "test")]  # other sequences
    expected[("k_table", "5,3", "generalisation")] = expected[("k_table", "3,3", "test")]  # 3 objects, K = 3
    expected[("next_step", "3,3", "rnn_em")] = expected[("k_table", "3,3", "test")]
    for key, metrics in expected.items():
        row = rows[key]
        assert row["status"] == "scored" and int(row["sequences"]) == SEQUENCES and row["weights"] == tiny_checkpoint
        assert (float(row["ami_mean"]), float(row["ami_last"])) == (metrics["ami"], metrics["ami_last"]), key
        assert float(row["upper_bound_last"]) == metrics["upper_bound_last"], key
        curve = [float(v) for v in row["ami_per_step"].split()]
        assert len(curve) == 3 and sum(curve) / 3 == pytest.approx(metrics["ami"], abs=1e-6)
        assert row["command"].startswith("nem test --config")
        if key[0] == "k_table":
            assert f"{metrics['ami']:.3f} / {metrics['ami_last']:.3f}" in markdown
    assert f"| ≈ 15 | {expected[('next_step', '3,3', 'rnn_em')]['upper_bound_last']:.1f} |" in markdown
    assert rows[("k_table", "3,3", "train")]["split"] == "training" and "training split" in markdown
    general = rows[("k_table", "5,3", "generalisation")]
    assert (general["objects"], general["k"], float(general["poster"])) == ("3", "3", 0.886)

    for poster in ("0.969 ± 0.006", "3, 3 → 0.970 ± 0.005", "3, 5 → 0.972 ± 0.007", "5, 3 → 0.614 ± 0.003"):
        assert poster in markdown
    for bars in ("≈ 15", "≈ 31", "≈ 44", "≈ 69", "≈ 96"):
        assert bars in markdown
    not_shipped = {r["model"] for r in rows.values() if r["status"] == "not shipped yet"}
    assert not_shipped == {"3,5", "5,5", "4,4", "rnn_3", "rnn_4", "rnn_5"}
    assert "| 3, 5 | not shipped yet (`" in markdown and "not shipped yet (`" in markdown.split("## Next-step")[1]
    for name in ("ami_per_step_3obj_k3.png", "ami_per_step_5obj_k3.png"):
        assert Image.open(out / name).size[0] > 100
    assert not list(out.glob(".*.tmp"))


def test_a_malformed_weights_file_is_one_line_and_nothing_is_written(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "flying_shapes.ckpt").write_bytes(b"not a checkpoint")
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as info:
        main(["--weights", str(weights), "--configs", str(CONFIGS), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("nem-table: error: weights file ") and "flying_shapes.ckpt" in lines[0]
    assert "not a readable checkpoint" in lines[0] and not out.exists()


def test_a_checkpoint_of_another_k_or_cell_is_refused_before_scoring(tiny_checkpoint, tmp_path, capsys):
    for named, message in ((f"rnn_3={tiny_checkpoint}", "trained with K=3"), ("7,7=x.ckpt", "CELL one of 3,3")):
        with pytest.raises(SystemExit) as info:
            _table(tmp_path / named.split("=")[0], "--checkpoint", named)
        lines = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
        assert not (tmp_path / named.split("=")[0] / "results").exists()


@pytest.mark.parametrize("key", sorted(MODELS))
def test_each_model_names_a_config_of_its_objects_and_k(key):
    """The table's mapping: each config trains K components on the data of the row's object count."""
    model = MODELS[key]
    config = load_config(CONFIGS / model.config)
    assert config["model"]["k"] == model.k
    assert config["data"]["generate"] == f"flying_shapes_{model.objects}"
    assert load_config(CONFIGS / DATA_CONFIG[model.objects])["data"] == config["data"]


@pytest.mark.slow
def test_train_trains_the_named_models_side_by_side_then_scores_them(tiny_data, tmp_path, capsys):
    """--train fits each named model under its config, then scores its exported best checkpoint as its row."""
    weights = tmp_path / "weights"
    weights.mkdir()
    options = (
        f"--config {CONFIGS / 'debug.yaml'} --model.steps 3 --data.batch_size 8 --data.val_size 8 "
        "--trainer.max_steps 2 --trainer.precision 32-true --data.num_workers 0"
    )
    out = tmp_path / "results"
    main(
        ["--weights", str(weights), "--configs", str(CONFIGS), "--out", str(out), "--train", "5"]
        + ["--train-models", "3,3 rnn_3", "--train-options", options, "--data-dir", str(tiny_data)]
        + ["--sequences", str(SEQUENCES), "--precision", "32-true", "--num-workers", "0"]
    )
    capsys.readouterr()
    training = out / "training"
    trained = {"3,3": training / "flying_shapes.ckpt", "rnn_3": training / "flying_shapes_rnn_3obj.ckpt"}
    assert all(path.is_file() for path in trained.values()) and (training / "summary.md").is_file()
    assert (training / "metrics_flying_shapes.csv").is_file()
    rows = {(r["table"], r["model"], r["column"]): r for r in csv.DictReader((out / "table.csv").open())}
    scored = {r["model"] for r in rows.values() if r["status"] == "scored"}
    assert scored == {"3,3", "rnn_3"}
    assert {rows[k]["weights"] for k in rows if k[1] in scored} == {str(p) for p in trained.values()}
    expected = _nem_test(tiny_data / "flying_shapes_3.h5", str(trained["3,3"]))
    assert float(rows[("k_table", "3,3", "test")]["ami_last"]) == expected["ami_last"]
    assert float(rows[("k_table", "3,3", "test")]["upper_bound_last"]) == expected["upper_bound_last"]

    # the same --out again: refused with one line, the first training left as it was
    before = sorted(p.name for p in training.iterdir())
    with pytest.raises(SystemExit) as info:
        main(["--weights", str(weights), "--out", str(out), "--train", "5", "--train-models", "3,3"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and "already holds a training" in lines[0], lines
    assert sorted(p.name for p in training.iterdir()) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-models", "3,3 9,9"], "expected keys among 3,3 3,5"),
        (["--train-models", "3,3", "--checkpoint", "3,3=x.ckpt"], "both --checkpoint and --train name it"),
    ],
)
def test_train_refuses_unknown_or_doubly_named_models_before_anything(extra, message, tmp_path, capsys):
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as info:
        main(["--weights", str(tmp_path), "--out", str(out), "--train", "5", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not out.exists()
