"""One page's WebSocket: its session slot, its playback accounting, and one method per message type.

`Hub` is what every connection shares: the loaded model's single thread, the open pages, the slots. A
`Connection` runs three tasks until its socket ends: the receive loop (`run`), the producer that makes a chunk
whenever the page holds less than its buffer (`produce`), and the idle watch (`watch_idle`). Whatever ends it,
the slot and the cache are freed in a `finally` that an error cannot skip.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import WebSocket, WebSocketDisconnect

from ..cache.policy import PRESETS
from ..errors import UsageError
from ..runs.checks import MAX_PROMPT, check_live, check_message, check_prompt
from .live import Live
from .mirror import CALLS, announce, keep_alive

SAVE_EVERY = 2.0  # seconds: a session saves at most this often (each save re-encodes its video)
IDLE_TIMEOUT = 600.0  # seconds without a control or a frame played in a visible page: the session ends
PAGES_PER_SLOT = 8  # open pages (connections) per session slot; more are refused at connect


class Busy(UsageError):
    """Every session slot is taken."""


def buffer_frames(spec, chunk_seconds: float | None, buffer_seconds: float | None) -> int:
    """Unplayed frames the page may hold: `buffer_seconds` of video if given; else one chunk plus 1.5x the
    frames that play while a chunk is made (`chunk_seconds`, measured; two chunks until measured)."""
    per_chunk = spec.video_frames(2 * spec.chunk_frames) - spec.video_frames(spec.chunk_frames)  # a steady chunk's
    if buffer_seconds is not None:
        return max(1, round(buffer_seconds * spec.fps))
    if chunk_seconds is None:
        return 2 * per_chunk
    return per_chunk + math.ceil(1.5 * chunk_seconds * spec.fps)


@dataclass
class Hub:
    """What the connections share: the model (one thread for all model work), the open pages and the slots."""
    pipe: object
    folder: Path
    max_sessions: int = 2
    token: str | None = None
    blend_chunks: int = 0
    idle_timeout: float = IDLE_TIMEOUT
    buffer_seconds: float | None = None
    lives: dict = field(default_factory=dict)  # every open page's Live, by session id
    running: set = field(default_factory=set)  # the pages whose session holds a slot

    def __post_init__(self):
        self.model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headforcing-model")
        self.model.submit(int).result()  # its one thread starts now and serves every session: none is made per connection
        self.vocabulary = list(getattr(self.pipe.text_encoder, "vocabulary", ()) or []) or None
        self.beat = keep_alive(self.model) if self.pipe.parallel is not None else None

    async def on_model(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.model, self._call, fn, args)

    def _call(self, fn, args):
        """On the model thread: a session call is first announced to the other ranks (serve --parallel heads)."""
        if self.pipe.parallel is not None and isinstance(getattr(fn, "__self__", None), Live) and fn.__name__ in CALLS:
            announce(fn.__self__.sid, fn.__name__, args)
        return fn(*args)

    def close(self) -> None:
        """After the last page: the model thread's work ends (and the other ranks are told so)."""
        if self.beat is not None:
            self.beat.set()
            self.model.submit(announce, None, "end").result()
        self.model.shutdown(wait=True)


class Connection:
    def __init__(self, hub: Hub, ws: WebSocket):
        self.hub, self.ws, self.spec = hub, ws, hub.pipe.spec
        self.sid = f"{time.monotonic_ns():x}"
        self.live = hub.lives[self.sid] = Live(hub.pipe, hub.folder, hub.blend_chunks, self.sid)
        self.sent = self.played = 0
        self.paused = False
        self.fps_made, self.chunk_seconds = 0.0, None
        self.saved, self.active = -SAVE_EVERY, time.monotonic()
        self.wake = asyncio.Event()

    # ---- the connection's life -------------------------------------------------------------------------
    async def run(self) -> None:
        hub = self.hub
        await self.ws.send_json(dict(type="ready", fps=self.spec.fps, size=list(self.spec.size), policies=list(PRESETS),
                                     max_prompt=MAX_PROMPT, session=self.sid, vocabulary=hub.vocabulary,
                                     sessions=len(hub.running), max_sessions=hub.max_sessions, idle_timeout=hub.idle_timeout))
        tasks = [asyncio.create_task(self.produce()), asyncio.create_task(self.watch_idle())]
        try:
            while True:
                received = await self.ws.receive()
                if received["type"] == "websocket.disconnect":
                    break
                try:
                    await self.handle(check_message(received.get("text")))
                except Busy as e:  # a lasting message: the page retries until a slot frees
                    await self.ws.send_json(dict(type="busy", message=str(e)))
                except (ValueError, TypeError) as e:  # UsageError, bad JSON, a prompt the model refuses
                    await self.ws.send_json(dict(type="error", message=str(e) if isinstance(e, UsageError) else "malformed message"))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:  # whatever ended the connection (the client, the model, the server), the slot and cache are freed
            for task in tasks:
                task.cancel()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                hub.lives.pop(self.sid, None)
                hub.running.discard(self.sid)
                await hub.on_model(self.live.close)  # after any step in flight: frees the cache at once

    def buffered(self) -> int:
        return buffer_frames(self.spec, self.chunk_seconds, self.hub.buffer_seconds)

    async def produce(self) -> None:
        """Make a chunk whenever the page holds less than its buffer; a model failure ends the connection."""
        while True:
            if self.live.session is None or self.paused or self.sent - self.played >= self.buffered():
                self.wake.clear()
                await self.wake.wait()
                continue
            start = time.perf_counter()
            try:
                stats, frames = await self.hub.on_model(self.live.step)
            except Exception as e:  # the model failed: say so and close; run()'s clean-up frees the slot
                message = str(e) if isinstance(e, UsageError) else f"the session failed: {type(e).__name__}: {e}"
                await self.ws.send_json(dict(type="error", message=message, fatal=True))
                await self.ws.close(code=1011)
                return
            took = time.perf_counter() - start
            self.fps_made = len(frames) / took
            # a moving average of the time a chunk takes to make
            self.chunk_seconds = took if self.chunk_seconds is None else 0.8 * self.chunk_seconds + 0.2 * took
            self.sent += len(frames)
            await self.ws.send_json(dict(type="chunk", frames=frames, stats=dict(stats, fps_made=self.fps_made, buffer=self.buffered()),
                                         timeline=self.live.session.timeline()))

    async def watch_idle(self) -> None:
        timeout = self.hub.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if self.sid in self.hub.running and time.monotonic() - self.active > timeout:
                await self.end_session()
                await self.ws.send_json(dict(type="ended", message=f"the session ended after {timeout:g} s without use, "
                                             "to free its slot: press Enter to start again"))

    # ---- sessions ----------------------------------------------------------------------------------------
    async def start(self, prompt: str, policy: str, seed: int) -> None:
        """A new session for this page, if a slot is free (the check and the claim happen with no await
        between them, so two pages cannot take the last slot together)."""
        hub = self.hub
        if self.sid not in hub.running and len(hub.running) >= hub.max_sessions:
            raise Busy(f"busy: {len(hub.running)} of {hub.max_sessions} sessions running; this page starts when one frees")
        hub.running.add(self.sid)
        try:
            await hub.on_model(self.live.start, prompt, policy, seed)
        except BaseException:
            hub.running.discard(self.sid)
            raise
        self.sent = self.played = 0
        self.paused, self.chunk_seconds = False, None
        await self.note(prompt)

    async def end_session(self) -> None:
        self.hub.running.discard(self.sid)
        await self.hub.on_model(self.live.close)  # the cache is freed at once; the page may start again
        self.sent = self.played = 0
        self.paused = False

    async def note(self, prompt: str) -> None:
        """What the text encoder will not read in `prompt`, shown on the page."""
        for text in getattr(self.hub.pipe.text_encoder, "notes", lambda p: [])(prompt):
            await self.ws.send_json(dict(type="note", message=text))

    # ---- messages ------------------------------------------------------------------------------------------
    async def handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind != "played" or message.get("visible", True):
            self.active = time.monotonic()
        method = getattr(self, f"on_{kind}", None) if isinstance(kind, str) and kind.isidentifier() else None
        if method is None:
            raise UsageError(f"unknown message type {kind!r}")
        await method(message)
        self.wake.set()

    async def on_start(self, message: dict) -> None:
        prompt = check_prompt(message.get("prompt"))
        policy, seed = message.get("policy", "headforcing"), message.get("seed", 0)
        check_live(self.spec, policy, seed)
        await self.start(prompt, policy, seed)

    async def on_prompt(self, message: dict) -> None:
        if self.live.session is None:  # a prompt before any session starts one
            return await self.on_start(message)
        prompt = check_prompt(message.get("prompt"))
        await self.hub.on_model(self.live.set_prompt, prompt)
        await self.note(prompt)

    async def on_restart(self, message: dict) -> None:
        """A new session with the page's prompt, policy and seed where given, else the session's own."""
        session = self.live.session
        if session is None:
            raise UsageError("nothing to restart: start a session first")
        await self.on_start(dict(message, prompt=message.get("prompt") or session.history[0]["prompt"],
                                 policy=message.get("policy", session.options.policy), seed=message.get("seed", session.options.seed)))

    async def on_pause(self, message: dict) -> None:
        self.paused = True

    async def on_resume(self, message: dict) -> None:
        self.paused = False

    async def on_stop(self, message: dict) -> None:
        await self.end_session()

    async def on_played(self, message: dict) -> None:
        frames = message.get("frames")
        if not isinstance(frames, int) or isinstance(frames, bool):
            raise UsageError("played: frames must be an integer")
        self.played = max(self.played, min(frames, self.sent))

    async def on_save(self, message: dict) -> None:
        if self.live.session is None:
            raise UsageError("nothing to save yet")
        if time.monotonic() - self.saved < SAVE_EVERY:
            raise UsageError(f"one save every {SAVE_EVERY:g} s: try again in a moment")
        self.saved = time.monotonic()
        video, sidecar = await self.hub.on_model(self.live.save)
        base = f"/download/{self.sid}/"
        query = f"?token={self.hub.token}" if self.hub.token else ""
        await self.ws.send_json(dict(type="saved", video=base + video.name + query, timeline=base + sidecar.name + query))
