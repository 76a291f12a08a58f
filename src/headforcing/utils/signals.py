"""Ctrl-C and SIGTERM, as a long run wants them.

At start-up (imports, loading) a signal ends the process with one line and no traceback (`Interrupted`). One
that lands while a finalizer (`__del__`) runs cannot raise there (Python would print and drop the exception), so
it is kept and raised at the next checkpoint (`check()`: the start of the chunk loop, the end of the command).
While chunks are being made, the first signal only asks the run to stop after the chunk in flight (the
caller then closes its video and saves its state); a second one stops at once, even when both arrive during
one long operation: Python runs its handler once for signals that arrive while C code runs, so every
delivery is also counted through a wakeup pipe (`signal.set_wakeup_fd`: one byte a signal).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_kept: list[int] = []  # signals that arrived inside a finalizer, not raised yet


class Interrupted(BaseException):
    """A signal ended the run; `code` is the exit status (128 + signal number)."""

    def __init__(self, signum: int, message: str = "interrupted"):
        super().__init__(message)
        self.signum, self.code, self.message = signum, CODES.get(signum, 128 + signum), message


def _in_finalizer(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise(signum, frame):
    if _in_finalizer(frame):  # raising here would be printed and lost: keep it for the next checkpoint
        _kept.append(signum)
        return
    raise Interrupted(signum)


def install() -> None:
    """From now on SIGINT and SIGTERM raise `Interrupted` (caught by the CLI: one line, 130 / 143)."""
    for signum in CODES:
        signal.signal(signum, _raise)


def check() -> None:
    """Raise a signal kept from inside a finalizer, if any."""
    if _kept:
        raise Interrupted(_kept.pop(0))


RELAY_S = 1.0  # under torchrun the same signal again this soon is the launcher passing on the terminal's one


class StopRequest:
    """Set by the first signal inside `deferred()`; the run checks it between chunks."""

    def __init__(self):
        self.signum: int | None = None
        self.at = 0.0  # when it came (time.monotonic)

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def deferred():
    """Inside: the first SIGINT/SIGTERM is recorded in the yielded StopRequest; a second raises at once."""
    check()
    stop = StopRequest()
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)

    relays = "TORCHELASTIC_RUN_ID" in os.environ  # a Ctrl-C reaches a torchrun worker twice: from the
    # terminal and from the launcher, which passes it on to its workers

    def delivered(signum: int) -> list[int]:
        """The signals delivered since the last call (each wrote its number), at least the one being handled."""
        try:
            return list(os.read(read, 1024)) or [signum]
        except BlockingIOError:
            return [signum]

    def ask(signum, frame):
        seen = delivered(signum)
        relayed = relays and set(seen) == {signum} and (not stop or (stop.signum == signum and time.monotonic() - stop.at < RELAY_S))
        if not relayed and (stop or len(seen) > 1):
            raise Interrupted(signum, "interrupted again: stopped at once")
        if not stop:
            stop.signum, stop.at = signum, time.monotonic()

    previous = {signum: signal.signal(signum, ask) for signum in CODES}
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(read)
        os.close(write)
