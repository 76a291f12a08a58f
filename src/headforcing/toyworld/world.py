"""A procedural world whose ground truth is known exactly: coloured shapes bouncing on a background.

Seeded, numpy only. Each video has a caption from a small grammar ("a red circle and a blue square bounce
on a green background"), per-frame true state (positions, colours, shapes), and optional scene changes
(the caption of the changed scene) for prompt timelines. `decode_state` reads the state back from a frame by
colour segmentation, so a long-horizon benchmark can measure a model against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..models.toy import PALETTE, SHAPES

OCCLUDER = (128, 128, 128)  # grey: never an object or background colour
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
    visible: bool = True  # an object that left the scene keeps moving, unseen and uncaptioned
    said: bool = True  # the caption names its colour ("a red circle"), or only its shape ("a circle")


@dataclass
class World:
    size: int
    background: str
    things: list[Thing]
    occluder: tuple[int, int] | None = None  # x range of a static grey bar
    changes: dict = field(default_factory=dict)  # frame -> (thing index, new colour)
    background_said: bool = True  # "on a green background", or "on a background"

    def caption(self) -> str:
        """What the scene's caption says: the visible objects (colours where said), the background."""
        names = [f"a {t.colour} {t.shape}" if t.said else f"a {t.shape}" for t in self.things if t.visible]
        ground = f"a {self.background} background" if self.background_said else "a background"
        if not names:
            return ground
        subject = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "bounces" if len(names) == 1 else "bounce"
        return f"{subject} {verb} on {ground}"

    def state(self) -> dict:
        return {"background": self.background,
                "objects": [dict(shape=t.shape, colour=t.colour, x=t.x, y=t.y, r=t.r) for t in self.things if t.visible]}

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
            if not t.visible:
                continue
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
    """The caption of the scene after one object takes a new colour (the whole scene, so the prompt alone
    says what should be on screen)."""
    things = list(world.things)
    things[index] = replace(things[index], colour=colour)
    return replace(world, things=things).caption()


def make_world(seed: int, size: int = 64, objects: int | None = None, occluder: bool = False) -> World:
    rng = np.random.default_rng(seed)
    colours = list(PALETTE)
    background = colours[rng.integers(len(colours))]
    n = objects or int(rng.integers(1, 4))
    object_colours = rng.choice([c for c in colours if c != background], size=n, replace=False)
    shapes = rng.choice(SHAPES, size=n, replace=False) if n <= len(SHAPES) else rng.choice(SHAPES, size=n)
    things = []
    for shape, colour in zip(shapes, object_colours):
        r = float(rng.uniform(0.12, 0.18) * size)
        speed, angle = float(rng.uniform(0.03, 0.06) * size), float(rng.uniform(0, 2 * np.pi))
        things.append(Thing(str(shape), str(colour), float(rng.uniform(r, size - 1 - r)), float(rng.uniform(r, size - 1 - r)),
                            speed * np.cos(angle), speed * np.sin(angle), r))
    bar = None
    if occluder:
        x0 = int(rng.integers(size // 4, size // 2))
        bar = (x0, x0 + max(2, size // 16))
    return World(size, background, things, bar)


def pick_change(world: World, seed: int) -> tuple[int, str]:
    """A seed's scene change: which object takes which new colour (one not yet in the scene)."""
    rng = np.random.default_rng(seed + 1)
    index = int(rng.integers(len(world.things)))
    taken = {world.background} | {t.colour for t in world.things}
    return index, str(rng.choice([c for c in PALETTE if c not in taken]))


def generate(seed: int, frames: int, size: int = 64, objects: int | None = None, occluder: bool = False,
             change_at: int | None = None) -> tuple[np.ndarray, list[dict], list[tuple[int, str]]]:
    """(frames [N, size, size, 3] uint8, true state per frame, captions as (first frame, text)).
    change_at: from that frame one object takes a new colour (a scene change with its own caption)."""
    world = make_world(seed, size, objects, occluder)
    captions = [(0, world.caption())]
    change = None
    if change_at is not None:
        change = pick_change(world, seed)
        captions.append((change_at, change_caption(world, *change)))
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


def classify_shape(box: np.ndarray) -> str:
    """A region cut to its bounding box -> shape: a triangle (apex up) has far fewer pixels in its top half
    than its bottom half; of the symmetric ones, a square fills its box (circle: pi/4)."""
    h = box.shape[0]
    top, bottom = box[: h // 2].sum(), box[h - h // 2 :].sum()
    if top < 0.6 * bottom:
        return "triangle"
    return "square" if box.mean() > (FILL["square"] + FILL["circle"]) / 2 else "circle"


def decode_state(frame: np.ndarray, min_pixels: int = 6, min_interior: int = 2) -> dict:
    """Background colour, and per object colour: shape (fill of its bounding box) and the box's centre.

    Pixels snap to the nearest palette colour; the most common is the background. A colour is an object when
    its largest 4-connected region has `min_pixels` pixels, `min_interior` of them with all four neighbours
    of the same colour: the thin rings of blended colours that a model draws around an edge are not objects.
    Near-perfect on generated frames (a test shows it); on model output it reads what a viewer would."""
    import cv2

    pixels = frame.reshape(-1, 3).astype(np.float32)
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names] + [OCCLUDER], np.float32)  # [9, 3]
    labels = ((pixels[:, None, :] - table[None]) ** 2).sum(-1).argmin(1).reshape(frame.shape[:2])
    counts = np.bincount(labels.ravel(), minlength=len(table))
    counts[len(names)] = 0  # the occluder is never the background
    background = int(counts.argmax())
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    objects = []
    for label in range(len(names)):
        if label == background or counts[label] < min_pixels:
            continue
        mask = (labels == label).astype(np.uint8)
        n, regions, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        region = (regions == biggest).astype(np.uint8)
        interior = cv2.erode(region, cross, borderType=cv2.BORDER_REPLICATE)
        if stats[biggest, cv2.CC_STAT_AREA] < min_pixels or interior.sum() < min_interior:
            continue
        x, y, w, h, area = (int(v) for v in stats[biggest])
        shape = classify_shape(region[y : y + h, x : x + w])
        objects.append(dict(colour=names[label], shape=shape, x=x + w / 2, y=y + h / 2, pixels=area))
    return {"background": names[background], "objects": objects}
