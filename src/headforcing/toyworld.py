"""A procedural world whose ground truth is known exactly: coloured shapes bouncing on a background.

Seeded, numpy only. Each video has a caption from a small grammar ("a red circle and a blue square bounce
on a green background"), per-frame true state (positions, colours, shapes), and optional scene changes
("the circle turns yellow") for prompt timelines. `decode_state` reads the state back from a frame by
colour segmentation, so a long-horizon benchmark can measure a model against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
OCCLUDER = (128, 128, 128)  # grey: never an object or background colour
SHAPES = ("circle", "square", "triangle")
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box area


@dataclass
class Thing:
    shape: str
    colour: str
    x: float
    y: float
    vx: float
    vy: float
    r: float  # half the bounding-box side


@dataclass
class World:
    size: int
    background: str
    things: list[Thing]
    occluder: tuple[int, int] | None = None  # x range of a static grey bar
    changes: dict = field(default_factory=dict)  # frame -> (thing index, new colour)

    def caption(self) -> str:
        names = [f"a {t.colour} {t.shape}" for t in self.things]
        subject = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "bounces" if len(names) == 1 else "bounce"
        return f"{subject} {verb} on a {self.background} background"

    def state(self) -> dict:
        return {"background": self.background,
                "objects": [dict(shape=t.shape, colour=t.colour, x=t.x, y=t.y, r=t.r) for t in self.things]}

    def step(self) -> None:
        """Constant velocity, elastic bounces off the walls."""
        for t in self.things:
            t.x, t.y = t.x + t.vx, t.y + t.vy
            for pos, vel in (("x", "vx"), ("y", "vy")):
                p = getattr(t, pos)
                if p - t.r < 0 or p + t.r > self.size - 1:
                    setattr(t, vel, -getattr(t, vel))
                    setattr(t, pos, float(np.clip(p, t.r, self.size - 1 - t.r)))

    def render(self) -> np.ndarray:
        """[size, size, 3] uint8."""
        img = np.empty((self.size, self.size, 3), np.uint8)
        img[:] = PALETTE[self.background]
        yy, xx = np.mgrid[0 : self.size, 0 : self.size] + 0.5
        for t in self.things:
            dx, dy = xx - t.x, yy - t.y
            if t.shape == "circle":
                mask = dx**2 + dy**2 <= t.r**2
            elif t.shape == "square":
                mask = (np.abs(dx) <= t.r) & (np.abs(dy) <= t.r)
            else:  # triangle: apex up, base at the bottom of the box
                mask = (dy <= t.r) & (dy >= -t.r) & (np.abs(dx) <= (dy + t.r) / 2)
            img[mask] = PALETTE[t.colour]
        if self.occluder is not None:
            img[:, self.occluder[0] : self.occluder[1]] = OCCLUDER
        return img


def change_caption(world: World, index: int, colour: str) -> str:
    return f"the {world.things[index].shape} turns {colour}"


def make_world(seed: int, size: int = 64, objects: int | None = None, occluder: bool = False) -> World:
    rng = np.random.default_rng(seed)
    colours = list(PALETTE)
    background = colours[rng.integers(len(colours))]
    n = objects or int(rng.integers(1, 4))
    object_colours = rng.choice([c for c in colours if c != background], size=n, replace=False)
    shapes = rng.choice(SHAPES, size=n, replace=False) if n <= len(SHAPES) else rng.choice(SHAPES, size=n)
    things = []
    for shape, colour in zip(shapes, object_colours):
        r = float(rng.uniform(0.08, 0.13) * size)
        speed, angle = float(rng.uniform(0.015, 0.04) * size), float(rng.uniform(0, 2 * np.pi))
        things.append(Thing(str(shape), str(colour), float(rng.uniform(r, size - 1 - r)), float(rng.uniform(r, size - 1 - r)),
                            speed * np.cos(angle), speed * np.sin(angle), r))
    bar = None
    if occluder:
        x0 = int(rng.integers(size // 4, size // 2))
        bar = (x0, x0 + max(2, size // 16))
    return World(size, background, things, bar)


def generate(seed: int, frames: int, size: int = 64, objects: int | None = None, occluder: bool = False,
             change_at: int | None = None) -> tuple[np.ndarray, list[dict], list[tuple[int, str]]]:
    """(frames [N, size, size, 3] uint8, true state per frame, captions as (first frame, text)).
    change_at: from that frame one object takes a new colour (a scene change with its own caption)."""
    world = make_world(seed, size, objects, occluder)
    captions = [(0, world.caption())]
    change = None
    if change_at is not None:
        rng = np.random.default_rng(seed + 1)
        index = int(rng.integers(len(world.things)))
        taken = {world.background} | {t.colour for t in world.things}
        colour = str(rng.choice([c for c in PALETTE if c not in taken]))
        change = (index, colour)
        captions.append((change_at, change_caption(world, index, colour)))
    out, states = [], []
    for f in range(frames):
        if change is not None and f == change_at:
            world.things[change[0]] = replace(world.things[change[0]], colour=change[1])
        out.append(world.render())
        states.append(world.state())
        world.step()
    return np.stack(out), states, captions


def nearest_colour(rgb) -> str:
    names = list(PALETTE)
    dist = [np.sum((np.asarray(rgb, float) - PALETTE[n]) ** 2) for n in names]
    return names[int(np.argmin(dist))]


def decode_state(frame: np.ndarray, min_pixels: int = 6) -> dict:
    """Background colour, and per object colour: shape (fill of its bounding box) and the box's centre.
    Works on generated frames (near-perfect) and on model output (colours snapped to the palette)."""
    pixels = frame.reshape(-1, 3).astype(float)
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names] + [OCCLUDER], float)  # [9, 3]
    labels = ((pixels[:, None, :] - table[None]) ** 2).sum(-1).argmin(1).reshape(frame.shape[:2])
    counts = np.bincount(labels.ravel(), minlength=len(table))
    counts[len(names)] = 0  # the occluder is never the background
    background = int(counts.argmax())
    objects = []
    for label in range(len(names)):
        if label == background:
            continue
        ys, xs = np.nonzero(labels == label)
        if len(xs) < min_pixels:
            continue
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        fill = len(xs) / float(w * h)
        shape = min(FILL, key=lambda s: abs(FILL[s] - fill))
        centre_x, centre_y = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2  # of the bounding box
        objects.append(dict(colour=names[label], shape=shape, x=float(centre_x), y=float(centre_y), pixels=len(xs)))
    return {"background": names[background], "objects": objects}
