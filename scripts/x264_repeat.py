"""Does the same clip make the same lossy mp4 in every process? Encode one toy-world clip (2x upscaled to 64x64,
crf 18, frame by frame with a little torch work between, as generate writes) in N fresh processes, with x264's
macroblock-tree on (x264's default) or off (headforcing's writer), and count the different files.

    python scripts/x264_repeat.py --runs 10            # mbtree on, then off
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ENCODE = """
import hashlib, sys
import numpy as np
import torch
import av
frames = np.load(sys.argv[1])
container = av.open(sys.argv[2], "w")
stream = container.add_stream("libx264", rate=4, options={"crf": "18", "x264-params": "mbtree=" + sys.argv[3]})
stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
for frame in frames:
    container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
    torch.randn(200, 200) @ torch.randn(200, 200)
container.mux(stream.encode())
container.close()
print(hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    import numpy as np

    import headforcing

    session = headforcing.load("toy").session("a red circle and a blue square bounce on a green background")
    frames = np.concatenate([session.step().frames[0].numpy() for _ in range(30)]).repeat(2, 1).repeat(2, 2)
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "frames.npy", frames)
        for mbtree in ("1", "0"):
            digests = [subprocess.run([sys.executable, "-c", ENCODE, str(Path(folder) / "frames.npy"), str(Path(folder) / f"{i}.mp4"),
                                       mbtree], capture_output=True, text=True, check=True).stdout.strip() for i in range(args.runs)]
            print(f"mbtree={mbtree}: {len(set(digests))} different file(s) in {args.runs} runs "
                  f"({', '.join(sorted(hashlib.sha256(d.encode()).hexdigest()[:6] for d in set(digests)))})")


if __name__ == "__main__":
    main()
