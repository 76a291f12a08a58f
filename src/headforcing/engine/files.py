"""Files appear whole or not at all: written under a hidden temporary name beside the target, then renamed."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError


def publish(tmp: str, target) -> None:
    """Give a finished temporary file the mode a newly created file would have (0666 less the umask, not
    mkstemp's 0600) and rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def read_text(path, what: str) -> str:
    """A user's UTF-8 text file (a timeline, a prompt list); UsageError naming `what` if it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text") from None
