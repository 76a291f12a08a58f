"""Files appear whole or not at all: written under a hidden temporary name beside the target, then renamed."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import UsageError


def publish(tmp: str, target) -> None:
    """Give a finished temporary file the mode a newly created file would have (0666 less the umask, not
    mkstemp's 0600) and rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


MAX_TEXT = 16 * 2**20  # bytes of a user's text file (a timeline, a prompt list, a HeadMap): more is refused unread


def read_text(path, what: str, limit: int = MAX_TEXT) -> str:
    """A user's UTF-8 text file (a timeline, a prompt list); UsageError naming `what` if it cannot be read or
    is larger than `limit` bytes (read no further: /dev/zero ends at once)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"{what} {path} is larger than {limit // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text") from None


def parse_json(text: str, what: str):
    """JSON text -> Python values; UsageError naming `what` for malformed or too deeply nested JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise UsageError(f"{what} nests too deeply") from None


def read_json(path, what: str):
    """A user's JSON file, bounded and checked (read_text, then parse_json)."""
    return parse_json(read_text(path, what), f"{what} {path}")


def check_output(path, what: str, suffix: str | None = None) -> Path:
    """Fail early (before any model loads) if `what` cannot be written at `path`: a wrong suffix, a folder, a
    device or other non-regular file (/dev/full), a missing or unwritable folder. The only reliable test of a
    folder (permissions, read-only mounts, root) is to create a file there."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if suffix is not None and path.suffix.lower() != suffix:
        raise UsageError(f"{what} must be a {suffix} file, got {path}")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    if path.exists() and not path.is_file():
        raise UsageError(f"{what} {path} is not a regular file")
    if not parent.is_dir():
        raise UsageError(f"{what} folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(suffix=".probe", prefix=".probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{what} {path} is not writable: {e.strerror}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{what} {path} is not writable")
    return path


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
