"""Child processes of the side-by-side runner: their environment, their start, and the wait for them with a
deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nem_lightning.side_by_side.runs import SRC

STOP_SECONDS = 60  # between SIGTERM at the deadline and SIGKILL: time to write last.ckpt


@dataclass
class Finished:
    """How a run ended: exit status (None: never started), seconds from start to exit, why it stopped."""

    returncode: int | None
    seconds: float
    timed_out: bool = False
    note: str = ""
    refused: bool = False  # nem fit refused its options: never started


def log(message: str) -> None:
    print(f"[side_by_side {time.strftime('%H:%M:%S')}] {message}", flush=True)


def child_env(extra_paths: list[str] | tuple[str, ...] = (), threads: int | None = None) -> dict[str, str]:
    """Environment of every child: this package's folder, extra import paths, no W&B, unbuffered output.

    With ``threads``, OMP_NUM_THREADS and MKL_NUM_THREADS, which torch reads at start-up for its CPU threads.
    """
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    paths = [str(SRC), *map(str, extra_paths), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def start(command: list[str], logfile: Path, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` with its output (stdout and stderr) in ``logfile``."""
    with open(logfile, "w") as f:  # the child holds its own copy of the file
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def wait_all(processes: dict[str, subprocess.Popen], deadline: float | None = None) -> dict[str, Finished]:
    """Wait for every process until ``deadline`` (a ``time.monotonic()`` value, None for no limit).

    Processes still running at the deadline, or when this wait is interrupted (Ctrl-C), get SIGTERM, on which
    ``nem fit`` writes last.ckpt and exits 143; those still running ``STOP_SECONDS`` later are killed.
    """
    started = time.monotonic()
    done: dict[str, Finished] = {}
    stop_at: float | None = None  # when SIGTERM was sent
    reason = ""
    while len(done) < len(processes):
        try:
            for name, process in processes.items():
                if name not in done and process.poll() is not None:
                    done[name] = Finished(process.returncode, time.monotonic() - started, bool(stop_at), reason)
            now = time.monotonic()
            if stop_at is None and deadline is not None and now >= deadline:
                stop_at, reason = now, "stopped at the deadline"
                for name, process in processes.items():
                    if name not in done:
                        process.send_signal(signal.SIGTERM)
            elif stop_at is not None and now >= stop_at + STOP_SECONDS:
                for name, process in processes.items():
                    if name not in done:
                        process.kill()
                        process.wait()
                        done[name] = Finished(process.returncode, now - started, True, f"{reason}, killed")
            time.sleep(0.2)
        except KeyboardInterrupt:
            # the children got the same Ctrl-C; stop them the same way and still collect what they wrote
            if stop_at is None:
                stop_at, reason = time.monotonic(), "interrupted"
                for name, process in processes.items():
                    if name not in done and process.poll() is None:
                        process.send_signal(signal.SIGTERM)
    return done
