"""The docs/analysis scripts behind the results pages' figures, run as a reader would run them."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "docs" / "analysis"


def run_script(name, *args):
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=120)


def test_per_step_draws_the_curves_beside_the_poster(tmp_path):
    """Two labelled csv curves and the poster's points land in one PNG; without the poster fewer black pixels."""
    csv_path = tmp_path / "test_ami_per_step.csv"
    csv_path.write_text("step,ami\n" + "".join(f"{t},{min(1.0, 0.1 * t)}\n" for t in range(1, 21)))
    with_poster, without = tmp_path / "with.png", tmp_path / "without.png"
    done = run_script("per_step.py", "--out", str(with_poster), f"ours={csv_path}", f"again={csv_path}")
    assert done.returncode == 0, done.stderr
    done = run_script("per_step.py", "--no-poster", "--out", str(without), f"ours={csv_path}", f"again={csv_path}")
    assert done.returncode == 0, done.stderr
    black = [int((np.asarray(Image.open(p).convert("RGB")) < 20).all(axis=2).sum()) for p in (with_poster, without)]
    assert black[0] - black[1] > 150  # seven square markers, their legend entry


def test_per_step_names_a_malformed_csv_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.5\n")
    out = tmp_path / "out.png"
    done = run_script("per_step.py", "--out", str(out), f"ours={bad}")
    assert done.returncode == 2 and "bad.csv: expected a test_ami_per_step.csv with columns step, ami" in done.stderr
    assert not out.exists()
    gap = tmp_path / "gap.csv"
    gap.write_text("step,ami\n1,0.5\n3,0.6\n")
    done = run_script("per_step.py", "--out", str(out), f"ours={gap}")
    assert done.returncode == 2 and "expected steps 1..T in order" in done.stderr and not out.exists()
