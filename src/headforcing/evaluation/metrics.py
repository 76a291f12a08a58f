"""`headforcing eval`: long-video metrics per segment, without learned models, for any mp4.

Read frame by frame (memory does not grow with the video). Per video:
  temporal_flickering        VBench's: mean over adjacent frames of (255 - mean |f_i - f_i+1|) / 255
  dynamic_degree_proxy       VBench's rule on OpenCV (Farneback) flow instead of RAFT: frames sampled at
                             ~8 fps, per pair the mean of the top 5% flow magnitudes, threshold
                             6 * min(H, W) / 256 px; the video moves if round(4 * pairs / 16) pairs pass
  motion_smoothness_proxy    VBench's idea with flow warping instead of AMT: each odd frame is re-predicted
                             from its two even neighbours, score (255 - mean abs error) / 255
Per segment (default 5 s): luma, saturation, sharpness (variance of the Laplacian), flicker, motion
magnitude, and against the first segment: colour-histogram (HSV, Bhattacharyya) distance, SSIM and
PSNR of the segment's mean frame. `gap`: last 5 s minus first 5 s for each (for the metrics measured
against the first segment, which are trivially perfect there, the value over the last 5 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import av
import cv2
import numpy as np

from ..errors import UsageError

SEGMENT_METRICS = (
    "luma", "saturation", "sharpness", "flicker", "motion", "hist_distance", "ssim_to_first", "psnr_to_first",
)
FLOW_SIDE = 256  # flow runs on frames scaled to this short side (magnitudes are scaled back)


def open_video(path):
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.FFmpegError, IndexError, OSError) as e:
        raise UsageError(f"{path} is not a readable video ({type(e).__name__})") from None
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if fps <= 0:
        raise UsageError(f"{path}: no frame rate")
    return container, fps


def frames_of(container, path):
    """RGB uint8 frames [H, W, 3], one at a time."""
    try:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise UsageError(f"{path}: cannot decode ({type(e).__name__})") from None


def flow(a_gray: np.ndarray, b_gray: np.ndarray) -> np.ndarray:
    """Dense Farneback flow a -> b [h, w, 2] (pixels of the given images)."""
    return cv2.calcOpticalFlowFarneback(a_gray, b_gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def top5_magnitude(f: np.ndarray) -> float:
    rad = np.sqrt((f**2).sum(-1)).ravel()
    cut = max(1, int(rad.size * 0.05))
    return float(np.sort(rad)[-cut:].mean())


def midpoint(a: np.ndarray, c: np.ndarray, a_gray, c_gray) -> np.ndarray:
    """Predict the frame between a and c by warping both halfway along their flows."""
    h, w = a_gray.shape
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    f_ac, f_ca = flow(a_gray, c_gray), flow(c_gray, a_gray)
    from_a = cv2.remap(a, *(grid + 0.5 * f_ca).transpose(2, 0, 1), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    from_c = cv2.remap(c, *(grid + 0.5 * f_ac).transpose(2, 0, 1), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return (from_a.astype(np.float32) + from_c.astype(np.float32)) / 2


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two gray images in 0..255 (Gaussian window 11, sigma 1.5)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda im: cv2.GaussianBlur(im, (11, 11), 1.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean())


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = float(((x - y) ** 2).mean())
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


@dataclass
class Segment:
    start: float
    end: float = 0.0
    frames: int = 0
    luma: float = 0.0
    saturation: float = 0.0
    sharpness: float = 0.0
    diffs: list = field(default_factory=list)
    motions: list = field(default_factory=list)
    hist: np.ndarray | None = None
    mean_frame: np.ndarray | None = None

    def add(self, rgb: np.ndarray, gray: np.ndarray) -> None:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        self.luma += float(gray.mean()) / 255
        self.saturation += float(hsv[..., 1].mean()) / 255
        self.sharpness += float(cv2.Laplacian(gray, cv2.CV_64F).var())
        hist = cv2.calcHist([hsv], [0, 1], None, [30, 32], [0, 180, 0, 256])
        self.hist = hist if self.hist is None else self.hist + hist
        g = gray.astype(np.float64)
        self.mean_frame = g if self.mean_frame is None else self.mean_frame + g
        self.frames += 1

    def finish(self, first: "Segment") -> dict:
        n = self.frames
        mean, first_mean = (self.mean_frame / n).astype(np.float32), (first.mean_frame / first.frames).astype(np.float32)
        h1, h0 = cv2.normalize(self.hist, None), cv2.normalize(first.hist, None)
        return dict(
            start_s=self.start, end_s=self.end, frames=n,
            luma=self.luma / n, saturation=self.saturation / n, sharpness=self.sharpness / n,
            flicker=(255 - float(np.mean(self.diffs))) / 255 if self.diffs else float("nan"),
            motion=float(np.mean(self.motions)) if self.motions else float("nan"),
            hist_distance=float(cv2.compareHist(h1, h0, cv2.HISTCMP_BHATTACHARYYA)),
            ssim_to_first=ssim(mean, first_mean), psnr_to_first=psnr(mean, first_mean),
        )


def analyse(path, segment_seconds: float = 5.0) -> dict:
    """Every no-model metric of one video; raises UsageError for unreadable or too-short videos."""
    container, fps = open_video(path)
    seg_len = max(1, round(segment_seconds * fps))
    interval = max(1, round(fps / 8))  # VBench samples ~8 fps for the dynamic degree
    segments: list[Segment] = []
    diffs, motions, smooth = [], [], []
    prev = prev2 = None  # (rgb, small gray, small rgb) of the last two frames
    sampled = None
    scale = 1.0
    count = 0
    with container:
        for i, rgb in enumerate(frames_of(container, path)):
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            if i == 0:
                h, w = gray.shape
                scale = min(1.0, FLOW_SIDE / min(h, w))
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                shrink = (lambda im: cv2.resize(im, size, interpolation=cv2.INTER_AREA)) if scale < 1 else (lambda im: im)
            small, small_rgb = shrink(gray), shrink(rgb)  # each frame scaled once, for flow and re-prediction
            if i % seg_len == 0:
                segments.append(Segment(start=i / fps))
            seg = segments[-1]
            seg.add(rgb, gray)
            seg.end = (i + 1) / fps
            if prev is not None:
                d = float(cv2.absdiff(rgb, prev[0]).mean())
                diffs.append(d)
                seg.diffs.append(d)
            if i % interval == 0:
                if sampled is not None:
                    m = top5_magnitude(flow(sampled, small)) / scale
                    motions.append(m)
                    seg.motions.append(m)
                sampled = small
            if i % 2 == 0 and prev2 is not None:  # re-predict the odd frame i-1 from frames i-2 and i
                predicted = midpoint(prev2[2], small_rgb, prev2[1], small)
                smooth.append(float(np.abs(predicted - prev[2]).mean()))
            prev2, prev = prev, (rgb, small, small_rgb)
            count = i + 1
    if count < seg_len or count < 3:
        raise UsageError(f"{path} has {count} frames, fewer than one {segment_seconds:g} s segment ({seg_len} frames)")
    if segments[-1].frames < seg_len / 2 and len(segments) > 1:
        segments.pop()  # a trailing stub shorter than half a segment
    rows = [s.finish(segments[0]) for s in segments]
    h, w = gray.shape
    threshold, needed = 6.0 * min(h, w) / 256.0, round(4 * (len(motions) + 1) / 16.0)
    duration = count / fps
    return dict(
        path=str(path), fps=fps, frames=count, duration_s=duration, width=w, height=h, segment_seconds=segment_seconds,
        temporal_flickering=(255 - float(np.mean(diffs))) / 255,
        dynamic_degree_proxy=float(sum(m > threshold for m in motions) >= max(needed, 1)),
        motion_threshold_px=threshold,
        motion_smoothness_proxy=(255 - float(np.mean(smooth))) / 255 if smooth else float("nan"),
        segments=rows,
        gap=gaps(rows, duration),
    )


AGAINST_FIRST = ("hist_distance", "ssim_to_first", "psnr_to_first")


def gaps(rows: list[dict], duration: float, window: float = 5.0) -> dict:
    """Mean over the last `window` seconds minus mean over the first, for each segment metric (for those
    measured against the first segment: the mean over the last `window` seconds)."""
    first = [r for r in rows if r["start_s"] < window] or rows[:1]
    last = [r for r in rows if r["end_s"] > duration - window] or rows[-1:]
    mean = lambda rs, m: float(np.mean([r[m] for r in rs]))  # noqa: E731
    return {m: mean(last, m) - (0.0 if m in AGAINST_FIRST else mean(first, m)) for m in SEGMENT_METRICS}
