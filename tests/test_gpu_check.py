"""benchmarks/gpu_check.py, the prepared GPU session, runs end to end in its reduced CPU mode."""

import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_reduced_mode_trains_scores_and_summarises(tmp_path):
    """Data, benchmark, a few flying-shapes updates, `nem test` and a summary with weights-only checkpoint."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--reduced"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.md").read_text()
    assert "reduced mode" in summary and "## flagship" in summary
    assert "test/ami" in summary and "test/images" in summary
    assert "| 2 |" in summary  # the validation after update 3 (step index 2) is in the curve
    assert "ms/update" in (out / "bench.log").read_text()
    weights = torch.load(out / "flying_shapes_flagship.ckpt", map_location="cpu", weights_only=False)
    assert "optimizer_states" not in weights and weights["hyper_parameters"]["architecture"] == "flying_shapes"
    assert (out / "metrics_flagship.csv").is_file() and (out / "figure_flagship.png").is_file()
    with h5py.File(out / "data" / "flying_shapes_3_speed1.h5", "r") as f:
        assert f.attrs["max_speed"] == 1  # the original's 1 px per frame, not the generator's default


def test_gpu_check_refuses_a_folder_with_results(tmp_path):
    """Earlier results are never overwritten."""
    (tmp_path / "old.txt").write_text("kept")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--reduced"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "is not empty" in done.stderr
    assert (tmp_path / "old.txt").read_text() == "kept"
