"""Atomic file writing: a file appears at its path complete, or not at all.

    with atomic_path("out/figure.png") as tmp:
        image.save(tmp)

Everything the project writes for later use (generated datasets, predictions, figures, exported weights)
goes through `atomic_path`, so an error or interrupt mid-write never leaves a truncated file behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside `target` to write; on success move it onto `target`.

    The temporary file, `.<name>.<random hex>.tmp` in the target's folder (missing folders are created),
    is renamed over `target` with `os.replace` once the block ends without an exception: an existing
    file is replaced in one step, and readers see either the old file or the complete new one. On any
    exception, KeyboardInterrupt and SystemExit included, the temporary file is removed, the target is
    left as it was, and the exception propagates.

    The block must create the temporary file itself and close it before the block ends. (Not mkstemp:
    its files are private, mode 0600, whereas this one gets the usual permissions.)

    Args:
        target: the file to write.

    Yields:
        The temporary path, which does not exist yet.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
