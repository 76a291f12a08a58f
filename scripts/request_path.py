"""Follow a `generate` request through the package: which modules it passes and how often it comes back to one.

From the parsed arguments (`cli.generate.run_generate`) to the first frame written (`Mp4Writer.write`), every call into
a function of the headforcing package is recorded by its module; consecutive calls in one module are one visit.
A *return* is a visit to a module the request had already left. Loading the model (`engine.pipeline.load`, which
the request hands its load arguments to) is followed as its own path: the request path starts once a loaded
pipeline is handed over.

    python scripts/request_path.py            # the toy model, 1 s, into a temporary folder; then at any depth
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from headforcing import cli
from headforcing.utils import video

PACKAGE = "headforcing"
DEPTH = 2  # cli -> the run -> what it calls


class Path_:
    """Module visits of calls made at most `depth` module boundaries below the command (`cli`), or below
    `engine.pipeline.load` for the load: the request's own path (what the command calls, and what that calls),
    not the engine's internal work below it. depth=None: every call, at any depth."""

    def __init__(self, depth: int | None = DEPTH):
        self.depth = depth
        self.visits: dict[str, list[str]] = {"load": [], "request": []}
        self.part, self.done, self.load_base = "request", False, 0
        self.stack: list[tuple[str, int]] = []  # per active frame: (module, module boundaries below cli)

    def profile(self, frame, event, arg):
        if self.done:
            return
        module = frame.f_globals.get("__name__", "")
        if event == "return":
            if self.stack and self.stack[-1][0] == module:
                self.stack.pop()
            return
        if event != "call":
            return
        if not module.startswith(PACKAGE) or importing(frame):  # (a module's import is not the request)
            return
        depth = 0 if not self.stack else self.stack[-1][1] + (module != self.stack[-1][0])
        self.stack.append((module, depth))
        if frame.f_code.co_name == "load" and module == "headforcing.engine.pipeline":
            self.part, self.load_base = "load", depth - 1  # as if the command called it
        visits = self.visits[self.part]
        below = depth - (self.load_base if self.part == "load" else 0)
        if (self.depth is None or below <= self.depth) and (not visits or visits[-1] != module):
            visits.append(module)

    def left_load(self):
        self.part = "request"


def importing(frame) -> bool:
    """Whether the frame runs inside a package module's import (its top-level code, or a call it makes)."""
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__", "").startswith(PACKAGE):
            return True
        frame = frame.f_back
    return False


def summary(visits: list[str]) -> tuple[int, int]:
    seen, returns = set(), 0
    for module in visits:
        returns += module in seen
        seen.add(module)
    return len(seen), returns


def follow(depth: int | None) -> Path_:
    path = Path_(depth)
    first_write = video.Mp4Writer.write

    def write(self, frames):
        path.done = True
        return first_write(self, frames)

    video.Mp4Writer.write = write
    import headforcing.engine.pipeline as pipeline

    real_load = pipeline.load

    def traced_load(*args, **kwargs):
        out = real_load(*args, **kwargs)
        path.left_load()
        return out

    for module in list(sys.modules.values()):  # every module that imported `load` by name
        if getattr(module, "__name__", "").startswith(PACKAGE) and getattr(module, "load", None) is real_load:
            module.load = traced_load
    with tempfile.TemporaryDirectory() as folder:
        args = cli.build_parser().parse_args(["generate", "--prompt", "a red circle", "--seconds", "1", "--quiet",
                                              "--out", str(Path(folder) / "a.mp4")])
        sys.setprofile(path.profile)
        try:
            cli.run_generate(args)
        finally:
            sys.setprofile(None)
    video.Mp4Writer.write = first_write
    for module in list(sys.modules.values()):
        if getattr(module, "load", None) is traced_load:
            module.load = real_load
    return path


def main() -> None:
    for depth in (DEPTH, None):
        path = follow(depth)
        print(f"at most {depth} module boundaries below the command:" if depth else "at any depth (the engine's work too):")
        for part in ("request", "load"):
            modules, returns = summary(path.visits[part])
            print(f"  {part}: {modules} modules, {returns} returns to a module it had left")
            if depth is not None:
                print("    " + " -> ".join(m.removeprefix("headforcing.") for m in path.visits[part]))


if __name__ == "__main__":
    main()
