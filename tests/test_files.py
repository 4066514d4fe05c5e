"""Tests of the atomic-write helper: the target appears whole or not at all, and no temporary file stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nem_lightning.files import atomic_path


def test_success_replaces_the_target_only_at_the_end(tmp_path: Path) -> None:
    """While the block runs the old file is intact; afterwards the target holds the new bytes, nothing else."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        assert not tmp.exists()
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    with atomic_path(str(target)) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_an_exception_keeps_the_old_target_and_removes_the_temporary(tmp_path: Path, error: type) -> None:
    """Any exception, interrupts included, propagates, leaves the old file unchanged and removes the temporary."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise error("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_an_exception_before_anything_is_written_leaves_no_file(tmp_path: Path) -> None:
    """A block that fails before creating the temporary file leaves the folder as it was."""
    with pytest.raises(ValueError, match="nothing"):
        with atomic_path(tmp_path / "new.bin"):
            raise ValueError("nothing written")
    assert os.listdir(tmp_path) == []


def test_a_block_that_never_creates_the_temporary_fails_naming_it(tmp_path: Path) -> None:
    """Forgetting to write is an error (os.replace finds no file), not a silent success."""
    with pytest.raises(FileNotFoundError, match="new.bin"):
        with atomic_path(tmp_path / "new.bin"):
            pass
    assert os.listdir(tmp_path) == []
