"""Interrupting `nem-data`: SIGINT or SIGTERM at any moment ends it with 130 / 143, one line, and no file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from nem_lightning import files
from nem_lightning.generators import flying_mnist, interrupts, shapes
from nem_lightning.generators.command import main

# Runs `nem-data` with the finished file's close held up for a few seconds, announced by touching the
# marker file first, so that a signal is sure to arrive while the file is being written out.
SLOW_CLOSE = """
import sys
import time
from pathlib import Path

import h5py

from nem_lightning.generators.command import main

marker = Path(sys.argv[1])
close = h5py.File.close


def slow_close(self):
    if not marker.exists():
        marker.touch()
        time.sleep(2)
    close(self)


h5py.File.close = slow_close
main(sys.argv[2:])
"""


@pytest.fixture(autouse=True)
def _sigint_caught() -> Iterator[None]:
    """Catch SIGINT, also where the tests were started with it ignored (in the background of a script).

    `nem-data` leaves an ignored signal ignored, and a child started from here inherits SIG_IGN, whereas a
    caught signal is reset to its default in the child.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _run_and_signal(tmp_path: Path, signum: int, moment: str, progress: bool, train: int) -> tuple[Path, str] | None:
    """Start `nem-data flying-shapes`, send `signum` at `moment`, and check how it ended.

    Returns None when generation finished before the signal could stop it (the caller retries with more
    samples), else the output path and stderr of the interrupted run.
    """
    folder = tmp_path / f"{moment}-{train}"
    out = folder / "a.h5"
    marker = tmp_path / f"closing-{train}"
    args = ["flying-shapes", "--train", str(train), "--val", "10", "--test", "10", "--out", str(out)]
    if not progress:
        args.append("--no-progress")
    if moment == "close":
        command = [sys.executable, "-c", SLOW_CLOSE, str(marker), *args]
    else:
        command = [sys.executable, "-m", "nem_lightning.generators.command", *args]
    # A forced terminal would make the progress bar draw itself into the pipe.
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = (lambda: marker.exists()) if moment == "close" else (lambda: any(folder.glob(".a.h5.*.tmp")))
        deadline = time.monotonic() + 300  # starting Python and importing h5py takes long on a loaded machine
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started() or proc.poll() is not None, "generation did not start within 300 s"
        if moment == "mid":
            time.sleep(1.0)
        if proc.poll() is not None or out.exists():
            proc.communicate(timeout=120)
            assert proc.returncode == 0, f"nem-data failed before the signal: {proc.returncode}"
            return None
        proc.send_signal(signum)
        stdout, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    clean = "Traceback" not in err and "Exception ignored" not in err
    if proc.returncode == 0 and out.exists() and "wrote" in stdout and clean:
        return None  # the signal came after the file was in place: too late to stop it
    word = "interrupted" if signum == signal.SIGINT else "terminated"
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}, stderr:\n{err}"
    assert clean and len(err.strip().splitlines()) == 1, f"stderr is not one line:\n{err}"
    assert err.startswith(f"nem-data: {word}; nothing written") and "wrote" not in stdout
    assert list(folder.iterdir()) == [], "a file was left behind"
    return out, err


@pytest.mark.slow
@pytest.mark.parametrize("progress", [False, True], ids=["no-progress", "progress"])
@pytest.mark.parametrize("moment", ["start", "mid", "close"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_nem_data_and_leaves_no_file(tmp_path: Path, signum: int, moment: str, progress: bool) -> None:
    """A signal as generation starts, mid-way or while the file is closed exits 130/143 with one line, no file."""
    train = 3000
    for _ in range(3):
        if _run_and_signal(tmp_path, signum, moment, progress, train) is not None:
            return
        train *= 4  # it finished first: more samples leave the signal time to arrive
    pytest.fail(f"nem-data finished before the signal three times, last with {train // 4} samples")


def _handlers() -> tuple[object, object]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def _nem_data(out: Path, progress: bool = False) -> list[str]:
    sizes = ["--train", "20", "--val", "4", "--test", "4", "--frames", "3"]
    return ["flying-shapes", *sizes, "--out", str(out), *([] if progress else ["--no-progress"])]


def test_deferred_signals_are_raised_by_check_and_the_old_handlers_return() -> None:
    """Inside the block a signal only marks itself; `check` raises it; afterwards the old handlers are back."""
    before = _handlers()
    interrupts.check()  # nothing pending: no-op
    with interrupts.deferred_signals():
        signal.raise_signal(signal.SIGTERM)  # returns: the handler only records it
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(interrupts.Interrupted) as info:
            interrupts.check()
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143  # the first signal counts
    assert _handlers() == before
    interrupts.check()  # forgotten once the block is left


def test_ignored_signals_stay_ignored() -> None:
    """A signal ignored by whoever started the process is neither caught nor raised."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts.deferred_signals():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_samplers_stop_inside_a_block_on_a_pending_signal() -> None:
    """Drawing checks for signals as it paints, not only between blocks."""
    digits = np.zeros((10, 14, 14), dtype=np.float32)
    with interrupts.deferred_signals():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(interrupts.Interrupted):
            shapes.sample_shapes(np.random.default_rng(0), 10, objects=3, frames=4)
        with pytest.raises(interrupts.Interrupted):
            flying_mnist.sample_flying_mnist(np.random.default_rng(0), digits, np.arange(10), 10, 2, 4)


@pytest.mark.parametrize("progress", [False, True], ids=["no-progress", "progress"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_generation_in_process(
    signum: int, progress: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`main` called in process: a signal between blocks exits 130/143 with one line, no file, handlers restored."""
    original, calls = shapes.sample_shapes, []

    def signalling(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # the training split is written
            signal.raise_signal(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(shapes, "sample_shapes", signalling)
    before = _handlers()
    with pytest.raises(SystemExit) as info:
        main(_nem_data(tmp_path / "a.h5", progress))
    err = capsys.readouterr().err
    word = "interrupted" if signum == signal.SIGINT else "terminated"
    assert info.value.code == 128 + signum and err == f"nem-data: {word}; nothing written to {tmp_path / 'a.h5'}\n"
    assert len(calls) == 2 and list(tmp_path.iterdir()) == [] and _handlers() == before


def test_signal_while_the_file_closes_discards_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signal during the final close of the complete file still leaves nothing behind."""
    close = h5py.File.close

    def signalling_close(self: h5py.File) -> None:
        signal.raise_signal(signal.SIGINT)
        close(self)

    monkeypatch.setattr(h5py.File, "close", signalling_close)
    with pytest.raises(SystemExit) as info:
        main(_nem_data(tmp_path / "a.h5"))
    assert info.value.code == 130 and len(capsys.readouterr().err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_signal_after_the_file_is_in_place_is_too_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the file has been moved into place the run is complete: it reports the file and exits normally."""
    replace = os.replace

    def replace_then_signal(src: Path, dst: Path) -> None:
        replace(src, dst)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(files.os, "replace", replace_then_signal)
    main(_nem_data(tmp_path / "a.h5"))
    assert "wrote flying_shapes_3" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]
