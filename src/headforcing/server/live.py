"""One browser connection's live video: a session, what was sent and played, and the mp4 of it so far.

Model work happens on the server's single model thread (sessions share one loaded DiT, whose attention is
routed to one cache at a time); everything here is called from that thread except `encode_frames`.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..utils.video import Mp4Writer, write_timeline


def data_url(frame: np.ndarray) -> str:
    """A frame [H, W, 3] uint8 as a data: URL: PNG for small (toy) frames, JPEG (quality 90) for large ones."""
    bgr = np.ascontiguousarray(frame[..., ::-1])
    if frame.shape[0] * frame.shape[1] <= 128 * 128:
        ok, data = cv2.imencode(".png", bgr)
        kind = "png"
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(data.tobytes()).decode()


class Live:
    def __init__(self, pipe, folder: Path, blend_chunks: int = 0, sid: str | None = None):
        self.pipe, self.folder, self.blend_chunks, self.sid = pipe, folder, blend_chunks, sid
        self.session = None
        self.writer = None
        self.saves = 0

    def start(self, prompt: str, policy: str, seed: int) -> None:
        self.close()
        self.session = self.pipe.session(prompt, policy=policy, seed=seed, blend_chunks=self.blend_chunks)
        self._open_writer()

    def _open_writer(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="live-", dir=self.folder))
        self.writer = Mp4Writer(self.dir / "video.mp4", self.session.width, self.session.height, self.pipe.spec.fps)

    def set_prompt(self, prompt: str) -> None:
        self.session.set_prompt(prompt)

    def step(self) -> tuple[dict, list[str]]:
        chunk = self.session.step()
        frames = chunk.frames[0].numpy()
        self.writer.write(frames)
        return self.stats(), [data_url(f) for f in frames]

    def stats(self) -> dict:
        s = self.session.stats()
        return dict(chunk=s["chunks"], frames=s["video_frames"], seconds=s["seconds"], cache_mib=s["cache_bytes"] / 2**20,
                    episodic=s["episodic"], prompt=s["prompt"], policy=s["policy"], seed=self.session.options.seed, heads=s["heads"])

    def save(self) -> tuple[Path, Path]:
        """The mp4 of the session so far and its timeline, as files (replacing the previous save's); the
        recording goes on in a new file that starts with a copy of this one."""
        self.saves += 1
        for old in self.dir.glob("video-*"):  # one saved file per session: the newest replaces the last
            old.unlink()
        done = self.writer
        done.__exit__(None, None, None)
        video = done.path.with_name(f"video-{self.saves}.mp4")
        done.path.rename(video)
        sidecar = write_timeline(video, self.session.timeline(), always=True)
        self.writer = Mp4Writer(done.path, self.session.width, self.session.height, self.pipe.spec.fps)
        self.writer.copy(video)
        return video, sidecar

    def close(self) -> None:
        """Free the session (its cache) and drop the recording."""
        if self.writer is not None:
            self.writer.__exit__(RuntimeError, None, None)  # removes the unfinished file
            shutil.rmtree(self.dir, ignore_errors=True)
            self.writer = None
        self.session = None
