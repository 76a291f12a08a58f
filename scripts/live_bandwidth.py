"""What the live page costs on the wire: bytes and encoding time per frame as `serve` sends them (PNG data
URLs at toy sizes, JPEG quality 90 above 128x128), at the toy size and at 832x480.

    python scripts/live_bandwidth.py

832x480 frames: (a) the tiny Wan model's decoded frames (random weights: noise, the worst case for JPEG) and
(b) the toy model's frames scaled up to 832x480 (smooth regions, closer to natural video). Real-weights
frames would fall between; the real ones need a GPU.
"""

import json
import time

import cv2
import numpy as np

import headforcing
from headforcing.server.live import data_url


def cost(frames) -> dict:
    start = time.perf_counter()
    sizes = [len(data_url(f)) for f in frames]
    took = (time.perf_counter() - start) / len(frames)
    return dict(frames=len(frames), bytes_per_frame=round(float(np.mean(sizes))), encode_ms_per_frame=round(took * 1000, 2),
                kbit_per_s_at_fps=None)


def main() -> None:
    toy = headforcing.load("toy")
    session = toy.session("a red circle and a blue square bounce on a green background", seed=1)
    toy_frames = np.concatenate([session.step().frames[0].numpy() for _ in range(8)])
    tiny = headforcing.load("tiny")
    noise = tiny.session("a drone shot over a coastline", size=(832, 480)).step().frames[0].numpy()
    smooth = np.stack([cv2.resize(f, (832, 480), interpolation=cv2.INTER_LINEAR) for f in toy_frames])
    rows = {"toy 32x32 (PNG)": (cost(toy_frames), 4), "832x480 noise, tiny model (JPEG)": (cost(noise), 16),
            "832x480 toy frames scaled up (JPEG)": (cost(smooth), 16)}
    for name, (row, fps) in rows.items():
        row["kbit_per_s_at_fps"] = round(row["bytes_per_frame"] * 8 * fps / 1000)
        row["fps"] = fps
        print(json.dumps(dict(case=name, **row)))


if __name__ == "__main__":
    main()
