"""Deferred SIGINT and SIGTERM: the handlers only record the signal, and generation stops at its next `check`.

An exception raised by a signal handler surfaces wherever the main thread happens to be, also inside a
`__del__` method or a weakref callback (h5py's object finalisers, say), where Python prints "Exception
ignored" and drops it, and generation runs on. Within `deferred_signals` the handlers raise nothing;
`check` raises `Interrupted` from ordinary code instead, between blocks and inside the loops that draw
and write them, so `finally` blocks and `atomic_path` remove the temporary file. Outside
`deferred_signals`, `check` does nothing and signals behave as usual.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

# Signals recorded by the handlers of the active `deferred_signals` block, in order of arrival.
_received: list[int] = []


class Interrupted(BaseException):
    """A deferred signal arrived. Not an Exception, like KeyboardInterrupt: `except Exception` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The status of a process stopped by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


def _record(signum: int, frame: object) -> None:
    _received.append(signum)


@contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, `signums` are only recorded for `check`; the previous handlers are restored after it.

    A signal that is ignored stays ignored, as for a program started with `nohup` or in the background of a
    script: whoever started the process chose that it should not be stopped this way.
    """
    caught = [signum for signum in signums if signal.getsignal(signum) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, _record) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default is closest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if all(handler is not _record for handler in previous.values()):  # the outermost block
            _received.clear()


def check() -> None:
    """Raise `Interrupted` for the first signal recorded by `deferred_signals`; do nothing if none arrived."""
    if _received:
        raise Interrupted(_received[0])
