"""Ctrl-C and SIGTERM, as a long run wants them.

At start-up (imports, loading) a signal ends the process with one line and no traceback (`Interrupted`).
While chunks are being made, the first signal only asks the run to stop after the chunk in flight (the
caller then closes its video and saves its state); a second one stops at once.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(BaseException):
    """A signal ended the run; `code` is the exit status (128 + signal number)."""

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signum, self.code, self.message = signum, CODES.get(signum, 128 + signum), message


def _raise(signum, frame):
    raise Interrupted(signum)


def install() -> None:
    """From now on SIGINT and SIGTERM raise `Interrupted` (caught by the CLI: one line, 130 / 143)."""
    for signum in CODES:
        signal.signal(signum, _raise)


class StopRequest:
    """Set by the first signal inside `deferred()`; the run checks it between chunks."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def deferred():
    """Inside: the first SIGINT/SIGTERM is recorded in the yielded StopRequest; a second raises at once."""
    stop = StopRequest()

    def ask(signum, frame):
        if stop:
            raise Interrupted(signum, "interrupted again: stopped at once")
        stop.signum = signum

    previous = {signum: signal.signal(signum, ask) for signum in CODES}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
