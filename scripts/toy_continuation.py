"""Continue 5 s toy-world clips (the world's true frames) for 20 s under their own caption, and compare with
the model generating the same 25 s unprompted by any clip: background right and captioned object colours
found, on the 20 s after the first 5 s, per seed and overall.

    python scripts/toy_continuation.py --seeds 16 --policy headforcing
"""

import argparse
import json
import time

import numpy as np

import headforcing
from headforcing.toyworld.eval import frame_metrics, read_frame
from headforcing.toyworld.world import generate, make_world

CLIP, MORE = 21, 80  # 5.25 s of the world, then 20 s at 4 fps


def measure(frames, world) -> dict:
    truth = {t.colour: t.shape for t in world.things}
    rows = [frame_metrics(read_frame(f, world.background), world.background, truth, None) for f in frames]
    return dict(background=float(np.mean([r["background_ok"] for r in rows])),
                background_every_frame=bool(all(r["background_ok"] for r in rows)),
                colours=float(np.mean([r["colour_recall"] for r in rows])))


def run(pipe, seed: int, policy: str) -> dict:
    world = make_world(seed, 32)
    clip, _, _ = generate(seed, CLIP, 32)
    continued = pipe.session(world.caption(), policy=policy, seed=seed)
    continued.start_from(pipe.encode_frames(np.stack(clip)))
    after_clip = np.concatenate([continued.step().frames[0].numpy() for _ in range(MORE // 3 + 1)])[:MORE]
    alone = pipe.session(world.caption(), policy=policy, seed=seed)
    own = np.concatenate([alone.step().frames[0].numpy() for _ in range((CLIP + MORE) // 3 + 1)])[CLIP : CLIP + MORE]
    return dict(seed=seed, continued=measure(after_clip, world), unprompted=measure(own, world))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--policy", default="headforcing")
    ap.add_argument("--out")
    args = ap.parse_args()
    pipe, start = headforcing.load("toy"), time.perf_counter()
    rows = [run(pipe, seed, args.policy) for seed in range(args.seeds)]
    summary = {kind: {m: float(np.mean([r[kind][m] for r in rows])) for m in ("background", "background_every_frame", "colours")}
               for kind in ("continued", "unprompted")}
    print(json.dumps(dict(policy=args.policy, seeds=args.seeds, minutes=(time.perf_counter() - start) / 60, **summary), indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(summary=summary, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
