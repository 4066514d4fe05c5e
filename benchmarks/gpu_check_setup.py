"""Step 1 of the GPU session and what every step uses: child processes and their logs, the carried wheels, and
the probe of versions and device."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# the side-by-side runner beside this script: the environment it gives its children
from side_by_side import child_env as runner_env

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Environment:
    """What the probe of step 1 found: versions, the device, and whether the check runs reduced."""

    torch: str
    lightning: str
    jsonargparse: str
    device: str
    reduced: bool


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def child_env(site: Path | None) -> dict[str, str]:
    """Environment of every child: the package from src/, carried wheels, no W&B, unbuffered output."""
    return runner_env([str(site)] if site else [])


def run(command: list[str], logfile: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run to completion (or ``timeout`` seconds), output into ``logfile``; return the exit status."""
    with open(logfile, "w") as f:
        try:
            return subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[gpu_check] stopped after {timeout:.0f} s\n")
            return 124


# 1. wheels


def install_wheels(out: Path) -> Path | None:
    """Install ``.whl/*.whl`` into a new temporary folder when jsonargparse cannot be imported; return it."""
    try:
        import jsonargparse  # noqa: F401

        return None
    except ImportError:
        pass
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        sys.exit("gpu_check: jsonargparse is not installed and no wheels are in .whl/")
    site = Path(tempfile.mkdtemp(prefix="nem_site_"))  # a fresh folder: nothing left from an earlier check
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(site),
        *map(str, wheels),
    ]
    run(command, out / "install.log", timeout=300)
    return site


def probe(env: dict[str, str], reduced: bool) -> Environment:
    """Versions and device as the children see them; the reduced mode when asked for or without a GPU."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, jsonargparse, pytorch_lightning as pl; "
            "print(torch.__version__, pl.__version__, jsonargparse.__version__, torch.cuda.is_available(), "
            "torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if done.returncode:
        sys.exit(f"gpu_check: the environment cannot import what nem needs:\n{done.stderr}")
    torch_version, pl_version, jap_version, cuda, device = done.stdout.split(maxsplit=4)
    found = Environment(torch_version, pl_version, jap_version, device.strip(), reduced or cuda != "True")
    log(
        f"torch {found.torch}, lightning {found.lightning}, jsonargparse {found.jsonargparse}, device {found.device}, "
        f"{'reduced' if found.reduced else 'full'} mode"
    )
    return found
