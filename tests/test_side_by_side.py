"""benchmarks/side_by_side.py: the list of runs, shared data made once, the deadline, and a reduced run end to end."""

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, ROOT

SCRIPT = ROOT / "benchmarks" / "side_by_side.py"


def _load():
    """The runner as a module, its folder on the import path as for the script, so that its parts import."""
    sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module("side_by_side")


sbs = _load()


def test_run_option_names_configs_and_options():
    """NAME=CONFIG[,CONFIG][::OPTIONS], the options split as a shell would."""
    run = sbs.parse_run("k5=configs/a.yaml,configs/b.yaml::--model.k 5 --name 'two words'")
    assert (run.name, run.configs, run.args) == (
        "k5",
        ["configs/a.yaml", "configs/b.yaml"],
        ["--model.k", "5", "--name", "two words"],
    )
    assert sbs.parse_run("plain=configs/a.yaml").args == []
    for bad in ("configs/a.yaml", "k5=", "a/b=configs/a.yaml", "=configs/a.yaml"):
        with pytest.raises(ValueError):
            sbs.parse_run(bad)


def test_plan_files_in_yaml_and_json(tmp_path):
    """A plan lists name, config (one or a list) and args (a string or a list); names must differ."""
    yaml_plan = tmp_path / "plan.yaml"
    yaml_plan.write_text(
        "runs:\n  - name: a\n    config: configs/a.yaml\n  - name: b\n    config: [configs/a.yaml, configs/b.yaml]\n"
        "    args: --model.k 5\n"
    )
    json_plan = tmp_path / "plan.json"
    json_plan.write_text(json.dumps([{"name": "c", "config": "configs/c.yaml", "args": ["--model.k", 3]}]))
    a, b = sbs.read_plan(yaml_plan)
    (c,) = sbs.read_plan(json_plan)
    assert (a.configs, a.args) == (["configs/a.yaml"], [])
    assert (b.configs, b.args) == (["configs/a.yaml", "configs/b.yaml"], ["--model.k", "5"])
    assert (c.name, c.args) == ("c", ["--model.k", "3"])
    with pytest.raises(ValueError, match="more than once"):
        sbs.check_names([a, a])
    (tmp_path / "empty.yaml").write_text("runs: []\n")
    with pytest.raises(ValueError, match="list of runs"):
        sbs.read_plan(tmp_path / "empty.yaml")


def test_runs_sharing_a_dataset_get_one_file_and_conflicts_are_refused(tmp_path):
    """Data is made once per file for all its runs; two datasets at one path are refused; reduced data is small."""
    runs = [sbs.Run(name, ["c.yaml"]) for name in ("a", "b", "c", "bad")]
    resolved = {
        "runs": {
            "a": {"path": "data/shapes.h5", "generate": "shapes", "seed": 0},
            "b": {"path": None, "generate": "shapes", "seed": 0},  # null path: data/<generate>.h5
            "c": {"path": "data/flying.h5", "generate": "flying_shapes_3", "seed": 1},
            "bad": {"error": "unknown option", "code": 2},
        }
    }
    files = sbs.data_files(runs, resolved, tmp_path)
    assert files["a"] is files["b"] and files["a"].runs == ["a", "b"] and "bad" not in files
    assert files["a"].path == tmp_path / "data" / "shapes.h5" and files["a"].sizes is None
    reduced = sbs.data_files(runs, resolved, tmp_path, tmp_path / "small")
    assert reduced["c"].path == tmp_path / "small" / "flying_shapes_3_seed1.h5" and reduced["c"].sizes == (64, 16, 16)
    resolved["runs"]["b"] = {"path": "data/shapes.h5", "generate": "flying_shapes_3", "seed": 0}
    with pytest.raises(ValueError, match="different data"):
        sbs.data_files(runs, resolved, tmp_path)


def test_time_budget_threads_and_options():
    """--minutes becomes max_time, the cores are shared among the CPU runs, a run's own options come last."""
    assert sbs.max_time(5.5) == "00:00:05:30" and sbs.max_time(90) == "00:01:30:00"
    options = sbs.mode_options(False, 2, 100)
    assert options == ["--trainer.max_time", "00:00:02:00", "--trainer.val_check_interval", "100"]
    run = sbs.Run("a", ["c.yaml"], ["--trainer.val_check_interval", "50"])
    command = sbs.fit_command(run, Path("runs"), options, Path("d.h5"))
    assert command.index("100") < command.index("50") < command.index("--data.path")
    logger = json.loads(command[command.index("--trainer.logger") + 1])
    assert logger["init_args"] == {"save_dir": "runs", "name": "a", "version": 0}
    runs = [sbs.Run(name, ["c.yaml"]) for name in ("a", "b", "bad")]
    resolved = {"cuda": False, "cpus": 8, "runs": {"a": {}, "b": {}, "bad": {"error": "x"}}}
    assert sbs.threads_per_run(runs, resolved, None) == {"a": 4, "b": 4, "bad": None}  # refused: never runs
    resolved["cuda"], resolved["runs"]["b"] = True, {"accelerator": "cpu"}
    assert sbs.threads_per_run(runs, resolved, None) == {"a": None, "b": 8, "bad": None}
    assert sbs.threads_per_run(runs, resolved, 2)["b"] == 2


def test_last_figure_and_updates(tmp_path):
    """The last figure is the latest step's first sample; updates come from metrics rows and epoch lines."""
    (tmp_path / "figures").mkdir()
    for name in ("epoch000_step0000002_sample0", "epoch001_step0000010_sample1", "epoch001_step0000010_sample0"):
        (tmp_path / "figures" / f"{name}.png").write_bytes(b"")
    assert sbs.last_figure(tmp_path).name == "epoch001_step0000010_sample0.png"
    assert sbs.last_figure(tmp_path / "none") is None
    logfile = tmp_path / "fit.log"
    logfile.write_text("epoch 0 | step 12 | train/loss 3\n")
    rows = [{"step": "9", "val/ami": "0.5"}, {"step": "4"}]
    assert sbs.updates_done(rows) == 10 and sbs.updates_done(rows, logfile) == 12


def test_deadline_stops_a_run_with_sigterm():
    """A run still going at the deadline gets SIGTERM (nem fit then writes last.ckpt) and is reported stopped."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    begun = time.monotonic()
    done = sbs.wait_all({"sleeper": sleeper, "quick": quick}, time.monotonic() + 1)
    assert time.monotonic() - begun < 30
    assert done["quick"].returncode == 3 and not done["quick"].timed_out
    assert done["sleeper"].timed_out and done["sleeper"].returncode == -15 and "deadline" in done["sleeper"].note


def test_a_folder_with_results_is_refused(tmp_path, capsys):
    """Earlier results are never overwritten, and nothing is started."""
    (tmp_path / "old.txt").write_text("kept")
    with pytest.raises(SystemExit) as info:
        sbs.main(["--out", str(tmp_path), "--reduced"])
    assert "is not empty" in str(info.value.code)
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"] and (tmp_path / "old.txt").read_text() == "kept"


@pytest.mark.slow
def test_reduced_runs_side_by_side_and_bring_back_results(tmp_path):
    """Two runs train side by side on one tiny shared dataset; a refused and a failing run are reported.

    Both good runs' metrics, last figure and weights-only best checkpoint come back into --out and the summary
    lists every run with its exit status and updates.
    """
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"runs:\n  - name: rnn_em\n    config: {CONFIGS / 'shapes.yaml'}\n"
        f"  - name: n_em\n    config: {CONFIGS / 'shapes_nem.yaml'}\n"
        f"  - name: typo\n    config: {CONFIGS / 'shapes.yaml'}\n    args: --model.no_such_option 1\n"
    )
    out = tmp_path / "results"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--reduced", "--plan", str(plan)]
    command += ["--run", f"k0={CONFIGS / 'shapes.yaml'}::--model.k 0"]  # passes the parser, fails on start
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # not every run succeeded
    summary = (out / "summary.md").read_text()
    for name in ("rnn_em", "n_em"):
        assert f"| {name} | 0 | 4 |" in summary  # exit 0, 4 updates
        assert "best checkpoint best-epoch000" in summary and f"weights in {name}.ckpt" in summary
        weights = torch.load(out / f"{name}.ckpt", map_location="cpu", weights_only=True)
        assert "state_dict" in weights and "optimizer_states" not in weights
        rows = (out / f"metrics_{name}.csv").read_text().splitlines()
        assert "val/ami" in rows[0] and len(rows) == 3  # header, validations after updates 2 and 4
        assert (out / f"figure_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"fit_{name}.log").is_file()
    assert "| typo | 2 (refused) |" in summary and "unknown option --model.no_such_option" in summary
    assert "| k0 | 2 |" in summary
    assert "model.k and model.steps must be at least 1" in (out / "fit_k0.log").read_text()
    assert not (out / "k0.ckpt").exists() and not (out / "typo.ckpt").exists()
    # one tiny dataset, generated once for the three runs that read it
    assert [p.name for p in (out / "data").iterdir()] == ["shapes.h5"]
    assert len(list(out.glob("data_*.log"))) == 1 and "rnn_em, n_em, k0" in done.stdout
