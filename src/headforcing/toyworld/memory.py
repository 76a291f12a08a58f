"""Memory scenes of the toy world: what the caption leaves unsaid, and objects that leave and come back.

A seed's scene has three objects (`make_world(seed, objects=3)`) on a background its caption names for the
first window only (5.25 s), so that the model draws it and must then keep it from its own frames
("... bounce on a background"):
  - the *keeper* (object 0) is on screen throughout and its colour is never said: the model picks it in the
    first frames and must keep it;
  - the *returner* (object 1) is on screen from the start, its colour said until it first leaves; then it
    leaves and returns again and again, each absence longer than the last (5 s, inside the 5.25 s window,
    then 15, 30 and 60 s, far outside it), its colour never said again ("... and a circle ...");
  - the *late entrant* (object 2) enters after the first window (so no sink holds it) with its colour said,
    and then leaves and returns like the returner.
The truth of a return is the colour the object left with. Training clips (`training_clip`) hold the same
cases inside one 21-frame window, so that copying from context is what the model learns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..models.specs import TOY
from .world import World, make_world

GAPS = (5.0, 15.0, 30.0, 60.0)  # absences, seconds
STAY = 10.0  # seconds on screen between absences
LATE_ENTRY = 12.0  # seconds: past the first window
KEEPER, RETURNER, LATE = 0, 1, 2
BACKGROUND = -1  # the index of the background's one event: its colour goes unsaid after the first window
BACKGROUND_SAID = TOY.trained_frames / TOY.fps  # seconds (21 frames, a chunk start)


def script(seconds: float) -> list[tuple[float, int, str]]:
    """(time in seconds, object or BACKGROUND, "enter" | "leave" | "return" | "unsay") in time order, the ones
    before `seconds`."""
    events = [(BACKGROUND_SAID, BACKGROUND, "unsay"), (LATE_ENTRY, LATE, "enter")]
    for index, start in ((RETURNER, 0.0), (LATE, LATE_ENTRY)):
        t = start + STAY
        for gap in GAPS:
            events += [(t, index, "leave"), (t + gap, index, "return")]
            t += gap + STAY
    return sorted(e for e in events if e[0] < seconds)


def apply(world: World, index: int, action: str) -> None:
    """An event: leaving hides the object and unsays its colour for good; entering shows it, said; "unsay"
    keeps it (or the background) on screen and stops saying its colour."""
    if index == BACKGROUND:
        world.background_said = action != "unsay"
        return
    thing = world.things[index]
    thing.visible = action != "leave"
    thing.said = action == "enter"


@dataclass
class MemoryScene:
    world: World  # as at frame 0
    events: list[tuple[int, int, str]]  # (frame, object, action), frames at chunk starts

    @classmethod
    def for_seed(cls, seed: int, seconds: float) -> "MemoryScene":
        world = make_world(seed, TOY.size[0], objects=3)
        world.things[KEEPER].said = False
        world.things[LATE].visible = False
        C = TOY.chunk_frames
        events = [(int(round(t * TOY.fps / C)) * C, i, a) for t, i, a in script(seconds)]
        return cls(world, events)

    def copy_world(self) -> World:
        return replace(self.world, things=[replace(t) for t in self.world.things])

    def cues(self) -> list[tuple[int, str]]:
        """(first frame, caption) at frame 0 and at each event."""
        world, out = self.copy_world(), [(0, self.world.caption())]
        for frame, index, action in self.events:
            apply(world, index, action)
            out.append((frame, world.caption()))
        return out

    def frames(self, n: int):
        """The world's own frames [H, W, 3] uint8, one by one (the benchmark's ceiling)."""
        world, pending = self.copy_world(), list(self.events)
        for f in range(n):
            while pending and pending[0][0] == f:
                apply(world, *pending.pop(0)[1:])
            yield world.render()
            world.step()

    def returns(self) -> list[dict]:
        """Each return: who, the absence in seconds, the frames of leaving and of returning, the true colour."""
        left, out = {}, []
        for frame, index, action in self.events:
            if action == "leave":
                left[index] = frame
            elif action == "return":
                gap = (frame - left[index]) / TOY.fps
                out.append(dict(who="from_start" if index == RETURNER else "late", gap=nearest_gap(gap), leave=left[index],
                                back=frame, colour=self.world.things[index].colour))
        return out


def nearest_gap(seconds: float) -> float:
    return min(GAPS, key=lambda g: abs(g - seconds))


def training_clip(rng: np.random.Generator, frames: int, size: int, returns: float = 0.5) -> tuple[np.ndarray, list[tuple[int, str]], int]:
    """A 21-frame clip holding a memory case inside the window, its captions [(first frame, text)] (at most
    3, changing at chunk starts): unsaid colours (objects' and the background's) the clip's own frames show;
    in a `returns` share of the clips (half by default) an object that leaves and returns with its colour
    unsaid, in half of the rest an object whose colour the caption stops saying while it stays on screen; and the chunk where copying from the
    context is needed (the return, the chunk the colour goes unsaid, else the second chunk)."""
    world = make_world(int(rng.integers(2**31)), size, objects=int(rng.integers(1, 4)))
    world.background_said = rng.uniform() < 0.5
    for thing in world.things:
        thing.said = rng.uniform() < 0.5
    C, chunks = TOY.chunk_frames, frames // TOY.chunk_frames
    events, focus = [], 1
    case = rng.uniform()
    if case < returns:
        leave = int(rng.integers(1, chunks - 1))
        back = int(rng.integers(leave + 1, chunks))
        index = int(rng.integers(len(world.things)))
        events, focus = [(leave * C, index, "leave"), (back * C, index, "return")], back
    elif case < returns + (1 - returns) / 2:
        focus, index = int(rng.integers(1, chunks)), int(rng.integers(len(world.things)))
        world.things[index].said = True
        events = [(focus * C, index, "unsay")]
    scene = MemoryScene(world, events)
    return np.stack(list(scene.frames(frames))), scene.cues(), focus


# ---- measuring -------------------------------------------------------------------------------------------
def most(frames: list[tuple[str, frozenset]], lo: int, hi: int) -> tuple[str | None, set[str]]:
    """Over frames lo..hi-1 of (background, object colours): the most common background and the colours found
    on most of the frames."""
    part = frames[max(lo, 0) : hi]
    if not part:
        return None, set()
    backgrounds = [b for b, _ in part]
    counts: dict[str, int] = {}
    for _, colours in part:
        for c in colours:
            counts[c] = counts.get(c, 0) + 1
    return max(set(backgrounds), key=backgrounds.count), {c for c, n in counts.items() if 2 * n > len(part)}


def identity(frames: list, said_colour: str, window: int) -> dict:
    """Of every later whole window: does it keep the first window's unsaid background and keeper colour?
    The keeper's colour is what window 1 shows besides the returner's (said) colour; nan when that is not one
    colour (the model did not draw the scene)."""
    background, colours = most(frames, 0, window)
    keeper = colours - {said_colour}
    later = range(window, len(frames) - window + 1, window)
    windows = [most(frames, w, w + window) for w in later]
    kept_bg = [b == background for b, _ in windows]
    out = dict(background=float(np.mean(kept_bg)) if windows else float("nan"), object_colour=float("nan"))
    if len(keeper) == 1 and windows:
        (colour,) = keeper
        out["object_colour"] = float(np.mean([colour in c for _, c in windows]))
    return out


def recall(frames: list, event: dict, fps: int) -> dict:
    """One return: the colour that left (found before the leave, gone just after it) against the colours that
    appear on the object's return (present after it, absent just before it). `hit` is None when the video
    did not show the object leave (no single colour went), `truth` says whether the true colour came back."""
    s = lambda seconds: int(seconds * fps)  # noqa: E731
    _, before = most(frames, event["leave"] - s(2), event["leave"])
    _, after_leave = most(frames, event["leave"] + s(1), event["leave"] + s(3))
    _, before_back = most(frames, event["back"] - s(2), event["back"])
    _, after_back = most(frames, event["back"] + s(1), event["back"] + s(3))
    came = after_back - before_back
    gone = before - after_leave
    hit = (next(iter(gone)) in came) if len(gone) == 1 else None
    return dict(who=event["who"], gap=event["gap"], hit=hit, truth=event["colour"] in came)
