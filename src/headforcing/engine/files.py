"""Files appear whole or not at all: written under a hidden temporary name beside the target, then renamed."""

from __future__ import annotations

import os


def publish(tmp: str, target) -> None:
    """Give a finished temporary file the mode a newly created file would have (0666 less the umask, not
    mkstemp's 0600) and rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)
