"""Does the toy model draw an object that the caption announces mid-video? (A diagnostic for the recall suite.)

On the recall suite's scenes, teacher-forced through `self-forcing`'s cache: at each late entrant's entry chunk
(its colour said by the caption) the model draws the chunk from noise; the share of its three frames that show an
object of the entrant's colour, per entry, and their mean.

    python scripts/entrant_probe.py [--toy-weights W] [--seeds 6] [--first-seed 300]
"""

from __future__ import annotations

import argparse

import numpy as np

from headforcing.engine.pipeline import load
from headforcing.toyworld.recall import C, RecallScene
from headforcing.toyworld.world import decode_state

SECONDS = 40  # every late entrant has come in


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--toy-weights")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=300)
    args = ap.parse_args()
    pipe = load("toy", toy_weights=args.toy_weights)
    shares = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        scene = RecallScene.for_seed(seed, SECONDS)
        n = SECONDS * 4 // C * C
        entries = {f // C: i for f, i, action in scene.events if action == "enter" and f < n}
        frames = list(scene.play(n))
        session, caption = pipe.session(frames[0][1], policy="self-forcing", seed=seed), frames[0][1]
        for chunk in range(n // C):
            part = frames[C * chunk : C * chunk + C]
            if part[0][1] != caption:
                caption = part[0][1]
                session.set_prompt(caption)
            truth = pipe.encode_frames(np.stack([f for f, _ in part]))
            if chunk in entries:
                colour = scene.world.things[entries[chunk]].colour
                drawn = session.step(truth).frames[0].numpy()
                shares.append(np.mean([any(o["colour"] == colour for o in decode_state(f)["objects"]) for f in drawn]))
            else:
                session.feed(truth)
    print(f"weights {args.toy_weights or 'shipped'}: entrant drawn in {np.mean(shares):.2f} of its entry frames "
          f"({len(shares)} entries; per entry {np.round(shares, 2).tolist()})")


if __name__ == "__main__":
    main()
