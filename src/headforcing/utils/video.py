"""H.264 mp4 written frame by frame with PyAV, atomically: nothing is left behind if a run fails."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import av
import numpy as np

from ..errors import UsageError
from .files import check_output, publish


def check_writable(path: str | Path) -> Path:
    """Fail early (before any work) if the mp4 cannot be written there."""
    return check_output(path, "output", ".mp4")


class Mp4Writer:
    """Use as a context manager; frames go to a temporary file renamed into place on success."""

    def __init__(self, path: str | Path, width: int, height: int, fps: int = 16, crf: int = 18):
        self.path = check_writable(path)
        fd, self.tmp = tempfile.mkstemp(suffix=".mp4", prefix=".partial-", dir=self.path.parent)
        os.close(fd)
        self.container = av.open(self.tmp, "w")
        # mbtree=0: x264's macroblock-tree rate control gave different bytes for the same frames from run to run
        # (scripts/x264_repeat.py: 9 files in 10 runs with it, 1 without; docs/GENERATE.md)
        self.stream = self.container.add_stream("libx264", rate=fps, options={"crf": str(crf), "x264-params": "mbtree=0"})
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.frames = 0

    def copy(self, path: str | Path) -> int:
        """Append every frame of another video (decoded to its own pixel format, no colour conversion); returns
        how many. With --crf 0 (lossless) the copied frames are the original's exactly."""
        with av.open(str(path)) as source:
            for frame in source.decode(video=0):
                frame.pts = None
                self.container.mux(self.stream.encode(frame.reformat(format="yuv420p")))
                self.frames += 1
        return self.frames

    def write(self, frames) -> None:
        """frames [N, H, W, 3] uint8, or a chunk's [1, N, H, W, 3] (a NumPy array or a CPU tensor)."""
        frames = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
        if frames.ndim == 5:
            frames = frames[0]
        for frame in frames:
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        self.frames += len(frames)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.container.mux(self.stream.encode())
            self.container.close()
            if exc_type is None:
                publish(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


def write_timeline(video: str | Path, entries: list[dict], always: bool = False) -> Path | None:
    """A video's timeline side file, VIDEO.timeline.json (which prompt from which frame): written when the
    timeline holds a switch (or `always`); otherwise one left by an earlier video of that name is removed."""
    import json

    sidecar = Path(video).with_suffix(".timeline.json")
    if always or len(entries) > 1:
        sidecar.write_text(json.dumps(entries, indent=1))
        return sidecar
    sidecar.unlink(missing_ok=True)
    return None


def count_frames(path: str | Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


MAX_SIDE = 4096  # the largest width x height a session accepts (engine.session.check_options)


def check_pixels(width: int, height: int, what: str) -> None:
    """A clip or image larger than a session accepts is refused from its header, before anything is decoded."""
    if width * height > MAX_SIDE * MAX_SIDE:
        raise UsageError(f"{what} is {width}x{height}, larger than {MAX_SIDE}x{MAX_SIDE}")


def read_clip(path: str | Path) -> tuple[np.ndarray, float]:
    """Every frame of a video file ([N, H, W, 3] uint8 RGB) and its frame rate; UsageError if unreadable."""
    if not Path(path).is_file():
        raise UsageError(f"clip {path} does not exist")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            check_pixels(stream.codec_context.width, stream.codec_context.height, f"clip {path}")  # by its header
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"clip {path} is not a readable video") from None
    if not frames:
        raise UsageError(f"clip {path} holds no frame")
    return np.stack(frames), fps


def read_image(path: str | Path) -> np.ndarray:
    """An image file as [1, H, W, 3] uint8 RGB; UsageError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below, by the header
            with Image.open(path) as image:
                check_pixels(*image.size, f"image {path}")
                return np.array(image.convert("RGB"))[None]  # a writable copy (torch warns on read-only arrays)
    except Image.DecompressionBombError:
        raise UsageError(f"image {path} is larger than {MAX_SIDE}x{MAX_SIDE}") from None
    except FileNotFoundError:
        raise UsageError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError):
        raise UsageError(f"image {path} is not a readable image") from None
