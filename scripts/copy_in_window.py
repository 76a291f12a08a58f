"""Does the toy model copy an unsaid colour from its context, inside its window?

Per seed, a world of 2 objects; the caption names every colour for the first 2 chunks (6 frames), then one
object's colour is no longer said ("a circle and a blue square ...") for the rest of the 21-frame window.
Measured on chunks 4-7 (frames 9-20): the share of frames showing the unsaid object's colour (`copied`),
against the same scene with the colour said throughout (`said`, the model's ceiling) and with it never said
(`never`, what the model picks without a context that holds it; a specific colour is about 1 in 6). The
session runs `self-forcing` (inside the window every policy keeps every frame).

    python scripts/copy_in_window.py --seeds 50 --first-seed 400 [--toy-weights W]
"""

from __future__ import annotations

import argparse

import numpy as np

from headforcing.engine.pipeline import load
from headforcing.models.specs import TOY
from headforcing.toyworld.world import decode_state, make_world

FRAMES, SAID_UNTIL, FROM = 21, 6, 9


def caption(world, unsaid: bool) -> str:
    world.things[0].said = not unsaid
    return world.caption()


def share(pipe, seed: int, case: str) -> float:
    world = make_world(seed, TOY.size[0], objects=2)
    colour = world.things[0].colour
    first = caption(world, case == "never")
    later = caption(world, case != "said")
    session = pipe.session(first, policy="self-forcing", seed=seed)
    frames = []
    for chunk in range(FRAMES // TOY.chunk_frames):
        if chunk * TOY.chunk_frames == SAID_UNTIL:
            session.set_prompt(later)
        frames += list(session.step().frames[0].numpy())
    found = [any(o["colour"] == colour for o in decode_state(f)["objects"]) for f in frames[FROM:]]
    return float(np.mean(found))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=400)
    ap.add_argument("--toy-weights")
    args = ap.parse_args()
    pipe = load("toy", toy_weights=args.toy_weights)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    out = {case: [share(pipe, s, case) for s in seeds] for case in ("said", "copied", "never")}
    print(f"weights {args.toy_weights or 'shipped'}, seeds {seeds.start}-{seeds.stop - 1}: " + ", ".join(
        f"{case} {np.mean(v):.2f} (seeds over half: {np.mean(np.array(v) > 0.5):.2f})" for case, v in out.items()))


if __name__ == "__main__":
    main()
