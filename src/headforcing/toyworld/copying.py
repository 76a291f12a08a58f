"""Does the toy model copy an unsaid colour from its context, inside its window? Two measures, each for an
object's colour and for the background's.

Sampled (the engine, `self-forcing`: inside the window every policy keeps every frame). Per seed, a world of
2 objects; the caption names every colour for the first 2 chunks (6 frames), then the object's (or the
background's) colour is no longer said ("a circle and a blue square ...", "... on a background") for the
rest of the 21-frame window. On chunks 4-7 (frames 9-20): the share of frames showing that colour
(`copied`), against the same scene with the colour said throughout (`said`, the model's ceiling) and never
said (`never`: no context holds it, so a model that picks some colour finds this one about 1 time in 6 for
an object, 1 in 8 for the background). Copying means `copied` well above `never`.

Teacher-forced (one forward of the training's block-causal model, no sampling): the world's own frames of a
clip whose caption never says the colour; the model predicts chunk 4 from pure noise (sigma 1), after 3
exact chunks of context (told the schedule's commit timestep, as when it samples) or after none. Score: the
share of predicted frames whose mean colour over the true object's (background's) pixels is nearest the
true colour. It separates "has learnt to copy" from "copies its own frames over many chunks".

    python -m headforcing.toyworld.copying --seeds 24 --first-seed 400 [--toy-weights W] [--context-noise T]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..engine.pipeline import load
from ..models.specs import TOY
from ..models.toy import PALETTE, load_toy
from .memory import MemoryScene
from .train import for_training, noised
from .world import decode_state, make_world, nearest_colour

FRAMES, SAID_UNTIL, FROM = 21, 6, 9
C, TOKENS = TOY.chunk_frames, (TOY.size[0] // 4) ** 2


def unsay(world, what: str, unsaid: bool) -> str:
    """The caption with the object's (what="object") or background's colour said or not; returns the colour."""
    if what == "object":
        world.things[0].said = not unsaid
        return world.things[0].colour
    world.background_said = not unsaid
    return world.background


def found(frame, what: str, colour: str) -> bool:
    state = decode_state(frame)
    return any(o["colour"] == colour for o in state["objects"]) if what == "object" else state["background"] == colour


def sampled(pipe, seed: int, what: str, case: str, context_noise: int | None) -> float:
    world = make_world(seed, TOY.size[0], objects=2)
    colour = unsay(world, what, case == "never")
    first = world.caption()
    unsay(world, what, case != "said")
    later = world.caption()
    session = pipe.session(first, policy="self-forcing", seed=seed, context_noise=context_noise)
    frames = []
    for chunk in range(FRAMES // C):
        if chunk * C == SAID_UNTIL:
            session.set_prompt(later)
        frames += list(session.step().frames[0].numpy())
    return float(np.mean([found(f, what, colour) for f in frames[FROM:]]))


@torch.no_grad()
def teacher_forced(model, words, holder, seed: int, what: str, context_chunks: int, told: float) -> list[bool]:
    """Per predicted frame of chunk `context_chunks` (from sigma 1, after that many exact chunks told timestep
    `told`): is the mean predicted colour over the true pixels of the object (background) nearest its true
    colour? `model` is set up by `train.for_training` (holder: its caption mask)."""
    world = make_world(seed, TOY.size[0], objects=2)
    colour = unsay(world, what, True)
    clip = np.stack(list(MemoryScene(world, []).frames(FRAMES)))  # [21, H, W, 3] uint8, the world's own frames
    x0 = torch.from_numpy(clip).permute(0, 3, 1, 2).float()[None] / 127.5 - 1.0  # [1, 21, 3, H, W]
    sigma = torch.ones(1, FRAMES // C)
    sigma[:, :context_chunks] = 0.0
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    xt, timestep, _ = noised(x0, eps, sigma, 0.0, told)  # exact context, told `told`
    context = words(*words.batch([world.caption()]))  # [1, L, D]
    holder["cross"] = torch.ones(1, 1, FRAMES * TOKENS, context.shape[1], dtype=torch.bool)
    v = model(hidden_states=xt.permute(0, 2, 1, 3, 4), timestep=timestep.repeat_interleave(C * TOKENS, dim=1),
              encoder_hidden_states=context, return_dict=False)[0].permute(0, 2, 1, 3, 4)
    k = slice(context_chunks * C, (context_chunks + 1) * C)
    pred = ((xt - v)[0, k].permute(0, 2, 3, 1).numpy() + 1.0) * 127.5  # x0 = x_t - sigma v, sigma 1: [3, H, W, 3]
    masks = (clip[k] == np.array(PALETTE[colour])).all(-1)  # [3, H, W] the colour's true pixels
    return [nearest_colour(p[m].mean(0)) == colour for p, m in zip(pred, masks) if m.sum() >= 4]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=400)
    ap.add_argument("--toy-weights")
    ap.add_argument("--context-noise", type=int, help="the commit pass's timestep (default: the model's own, 50)")
    args = ap.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"weights {args.toy_weights or 'shipped'}, context noise {args.context_noise}, seeds {seeds.start}-{seeds.stop - 1}")
    model, words = load_toy(args.toy_weights)
    model, words = model.eval(), words.eval()
    holder = for_training(model, C * TOKENS)
    told = float(TOY.schedule.context_noise if args.context_noise is None else args.context_noise)
    pipe = load("toy", toy_weights=args.toy_weights)
    for what in ("object", "background"):
        tf = {k: np.mean(sum((teacher_forced(model, words, holder, s, what, k, told) for s in seeds), []))
              for k in (3, 0)}
        out = {case: np.mean([sampled(pipe, s, what, case, args.context_noise) for s in seeds])
               for case in ("said", "copied", "never")}
        print(f"{what}: sampled said {out['said']:.2f} copied {out['copied']:.2f} never {out['never']:.2f}; "
              f"teacher-forced with context {tf[3]:.2f} without {tf[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
