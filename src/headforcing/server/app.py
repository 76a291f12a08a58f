"""`headforcing serve`: a live page (FastAPI + uvicorn; Starlette's WebSocket) where the video plays as it is
made and prompts change while it plays.

FastAPI because it is the ASGI stack the peers use for this (Krea Realtime, Daydream Scope), with WebSockets
built in and no build step. One model is loaded for the process; each WebSocket connection may run one
session, and up to `max_sessions` run at once: a slot is taken when a page starts a session (not when it
connects) and freed when it stops, disconnects, fails or sits idle for `idle_timeout` seconds. All model work runs on one thread (sessions share the DiT, whose attention is
routed to one cache at a time, and torch releases the GIL), so the event loop stays free for the sockets.
Frames go out as PNG (toy sizes) or JPEG data URLs, one message per chunk; the page plays them at the video's
frame rate and reports how many it has played: generation waits while the page holds more than a buffer of
unplayed frames (backpressure), so a model faster than real time does not race ahead, and a client that
never reads only stops its own session. The buffer is set from the measured time to make a chunk: one chunk
plus what plays while the next is made (x1.5), so a prompt switch reaches the screen after about that much
video; `buffer_seconds` fixes it instead.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from ..cache.policy import PRESETS, preset
from ..errors import UsageError
from .live import Live

MAX_PROMPT = 500  # characters
MAX_MESSAGE = 16 * 1024  # characters of one socket message: more is refused before it is parsed
SAVE_EVERY = 2.0  # seconds: a session saves at most this often (each save re-encodes its video)
IDLE_TIMEOUT = 600.0  # seconds without a control or a frame played in a visible page: the session ends
PAGES_PER_SLOT = 8  # open pages (connections) per session slot; more are refused at connect
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def rss_bytes() -> int:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def host_name(value: str) -> str:
    """The host of a Host header or an origin's netloc, without port or brackets ("[::1]:8000" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def same_origin(origin: str | None, host: str | None, allowed_origins: tuple[str, ...]) -> bool:
    """A WebSocket's Origin: absent (not a browser), one of `allowed_origins`, or the page's own origin
    (http(s)://<the Host it asked for>). Any other web page the user visits is refused (cross-site
    WebSocket hijacking)."""
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if origin in allowed_origins:
        return True
    scheme, _, netloc = origin.partition("://")
    return scheme in ("http", "https") and host is not None and netloc == host.strip().lower()


def buffer_frames(spec, chunk_seconds: float | None, buffer_seconds: float | None) -> int:
    """Unplayed frames the page may hold: `buffer_seconds` of video if given; else one chunk plus 1.5x the
    frames that play while a chunk is made (`chunk_seconds`, measured; two chunks until measured)."""
    per_chunk = spec.video_frames(2 * spec.chunk_frames) - spec.video_frames(spec.chunk_frames)  # a steady chunk's
    if buffer_seconds is not None:
        return max(1, round(buffer_seconds * spec.fps))
    if chunk_seconds is None:
        return 2 * per_chunk
    return per_chunk + math.ceil(1.5 * chunk_seconds * spec.fps)


def create_app(pipe, max_sessions: int = 2, token: str | None = None, blend_chunks: int = 0,
               hosts: tuple[str, ...] | None = LOOPBACK, origins: tuple[str, ...] = (),
               idle_timeout: float = IDLE_TIMEOUT, buffer_seconds: float | None = None) -> FastAPI:
    """`hosts`: the names the Host header may give (None: any; a server bound to every interface has a token
    instead); a request for another (DNS rebinding) is refused. `origins`: other origins whose pages may open
    the socket, beside the page's own. `idle_timeout`: seconds without a control or a frame played in a
    visible page before a session ends. `buffer_seconds`: a fixed playback buffer (None: measured)."""
    origins = tuple(o.lower().rstrip("/") for o in origins)
    model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headforcing-model")
    model.submit(int).result()  # its one thread starts now and serves every session: none is made per connection
    folder = Path(tempfile.mkdtemp(prefix="headforcing-serve-"))

    @asynccontextmanager
    async def lifespan(app):
        yield
        model.shutdown(wait=True)
        shutil.rmtree(folder, ignore_errors=True)

    # no /docs, /redoc or /openapi.json: the page and its socket are the whole interface (docs/LIVE.md)
    app = FastAPI(title="headforcing live", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    lives: dict[str, Live] = {}  # every open page's
    running: set[str] = set()  # the pages whose session holds a slot
    spec = pipe.spec
    vocabulary = list(getattr(pipe.text_encoder, "vocabulary", ()) or []) or None
    static = resources.files("headforcing") / "server" / "static"

    def allowed(given: str | None) -> bool:
        return token is None or (given is not None and hmac.compare_digest(given, token))

    async def on_model(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(model, fn, *args)

    def host_ok(headers) -> bool:
        return hosts is None or host_name(headers.get("host", "")) in hosts

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        if not host_ok(request.headers):
            return Response("unknown Host: this server answers only to the address it was started on", status_code=421)
        return await call_next(request)

    @app.get("/")
    async def page(request: Request):
        if not allowed(request.query_params.get("token")):
            return Response("a token is required: open the URL the server printed", status_code=403)
        return HTMLResponse(static.joinpath("index.html").read_text())

    @app.get("/static/{name}")
    async def asset(name: str):
        if name not in ("app.js", "style.css"):
            return Response(status_code=404)
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(static.joinpath(name).read_text(), media_type=kind)

    @app.get("/stats")
    async def stats(request: Request):
        if not allowed(request.query_params.get("token")):
            return Response(status_code=403)
        busy = [live.session for live in lives.values() if live.session is not None]
        return JSONResponse(dict(sessions=len(running), pages=len(lives), cache_bytes=sum(s.cache.nbytes() for s in busy), threads=threading.active_count(),
                                 rss_mib=round(rss_bytes() / 2**20, 1)))

    @app.get("/download/{sid}/{name}")
    async def download(sid: str, name: str, request: Request):
        live = lives.get(sid)
        if not allowed(request.query_params.get("token")) or live is None or live.writer is None:
            return Response(status_code=404)
        path = live.writer.path.parent / name
        if path.parent != live.writer.path.parent or not path.is_file() or not name.startswith("video-"):
            return Response(status_code=404)
        return FileResponse(path, filename=f"headforcing-{name}")

    @app.websocket("/ws")
    async def live_socket(ws: WebSocket):
        if not host_ok(ws.headers) or not same_origin(ws.headers.get("origin"), ws.headers.get("host"), origins):
            await ws.close(code=1008)  # before accepting: the handshake fails with 403, nothing is served
            return
        await ws.accept()
        if not allowed(ws.query_params.get("token")):
            await ws.send_json(dict(type="error", message="a token is required"))
            await ws.close(code=1008)
            return
        if len(lives) >= PAGES_PER_SLOT * max_sessions:
            await ws.send_json(dict(type="error", message=f"too many pages open ({len(lives)}): close one and reload", fatal=True))
            await ws.close(code=1013)
            return
        sid = f"{time.monotonic_ns():x}"
        live = lives[sid] = Live(pipe, folder, blend_chunks)
        state = dict(sent=0, played=0, paused=False, fps_made=0.0, chunk_seconds=None, saved=-SAVE_EVERY, active=time.monotonic())
        wake = asyncio.Event()
        await ws.send_json(dict(type="ready", fps=spec.fps, size=list(spec.size), policies=list(PRESETS), max_prompt=MAX_PROMPT,
                                session=sid, vocabulary=vocabulary, sessions=len(running), max_sessions=max_sessions,
                                idle_timeout=idle_timeout))

        def buffered() -> int:
            return buffer_frames(spec, state["chunk_seconds"], buffer_seconds)

        async def end_session() -> None:
            running.discard(sid)
            await on_model(live.close)  # the cache is freed at once; the page may start again
            state.update(sent=0, played=0, paused=False)

        async def watch_idle():
            while True:
                await asyncio.sleep(min(1.0, idle_timeout / 4))
                if sid in running and time.monotonic() - state["active"] > idle_timeout:
                    await end_session()
                    await ws.send_json(dict(type="ended", message=f"the session ended after {idle_timeout:g} s without use, "
                                            "to free its slot: press Enter to start again"))

        async def produce():
            while True:
                if live.session is None or state["paused"] or state["sent"] - state["played"] >= buffered():
                    wake.clear()
                    await wake.wait()
                    continue
                start = time.perf_counter()
                try:
                    stats, frames = await on_model(live.step)
                except Exception as e:  # the model failed: say so and close; the socket's clean-up frees the slot
                    message = str(e) if isinstance(e, UsageError) else f"the session failed: {type(e).__name__}: {e}"
                    await ws.send_json(dict(type="error", message=message, fatal=True))
                    await ws.close(code=1011)
                    return
                took = time.perf_counter() - start
                state["fps_made"] = len(frames) / took
                previous = state["chunk_seconds"]  # a moving average of the time a chunk takes to make
                state["chunk_seconds"] = took if previous is None else 0.8 * previous + 0.2 * took
                state["sent"] += len(frames)
                await ws.send_json(dict(type="chunk", frames=frames, stats=dict(stats, fps_made=state["fps_made"], buffer=buffered()),
                                        timeline=live.timeline()))

        async def start(message: dict) -> None:
            """A new session for this page, if a slot is free (the check and the claim happen with no await
            between them, so two pages cannot take the last slot together)."""
            if sid not in running and len(running) >= max_sessions:
                raise Busy(f"busy: {len(running)} of {max_sessions} sessions running; this page starts when one frees")
            running.add(sid)
            try:
                await on_model(live.start, message["prompt"], message.get("policy", "headforcing"), message.get("seed", 0))
            except BaseException:
                running.discard(sid)
                raise
            state.update(sent=0, played=0, paused=False, chunk_seconds=None)

        async def note(prompt: str) -> None:
            for text in getattr(pipe.text_encoder, "notes", lambda p: [])(prompt):
                await ws.send_json(dict(type="note", message=text))

        async def handle(message: dict) -> None:
            kind = message.get("type")
            if kind != "played" or message.get("visible", True):
                state["active"] = time.monotonic()
            if kind in ("start", "prompt"):
                prompt = message.get("prompt")
                if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
                    raise UsageError(f"a prompt is text of 1..{MAX_PROMPT} characters")
            if kind == "restart":  # with the page's prompt, policy and seed where given, else the session's own
                if live.session is None:
                    raise UsageError("nothing to restart: start a session first")
                message = dict(message, prompt=message.get("prompt") or live.session.history[0]["prompt"],
                               policy=message.get("policy", live.session.options.policy),
                               seed=message.get("seed", live.session.options.seed))
                prompt = message["prompt"]
                if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
                    raise UsageError(f"a prompt is text of 1..{MAX_PROMPT} characters")
            if kind in ("start", "restart") or (kind == "prompt" and live.session is None):
                policy, seed = message.get("policy", "headforcing"), message.get("seed", 0)
                if policy not in PRESETS or not isinstance(seed, int) or isinstance(seed, bool):
                    raise UsageError(f"policy must be one of {', '.join(PRESETS)} and seed an integer")
                if not preset(policy, spec.chunk_frames, spec.trained_frames).bounded:
                    raise UsageError(f"policy {policy!r} keeps every frame and cannot run live (its video must end "
                                     f"inside {spec.trained_frames} latent frames); pick a bounded one")
                await start(message)
                await note(message["prompt"])
            elif kind == "prompt":
                await on_model(live.session.set_prompt, message["prompt"])
                await note(message["prompt"])
            elif kind in ("pause", "resume"):
                state["paused"] = kind == "pause"
            elif kind == "stop":
                await end_session()
            elif kind == "played":
                frames = message.get("frames")
                if not isinstance(frames, int) or isinstance(frames, bool):
                    raise UsageError("played: frames must be an integer")
                state["played"] = max(state["played"], min(frames, state["sent"]))
            elif kind == "save":
                if live.session is None:
                    raise UsageError("nothing to save yet")
                if time.monotonic() - state["saved"] < SAVE_EVERY:
                    raise UsageError(f"one save every {SAVE_EVERY:g} s: try again in a moment")
                state["saved"] = time.monotonic()
                video, sidecar = await on_model(live.save)
                base = f"/download/{sid}/"
                query = f"?token={token}" if token else ""
                await ws.send_json(dict(type="saved", video=base + video.name + query, timeline=base + sidecar.name + query))
            else:
                raise UsageError(f"unknown message type {kind!r}")
            wake.set()

        producer, watcher = asyncio.create_task(produce()), asyncio.create_task(watch_idle())
        try:
            while True:
                received = await ws.receive()
                if received["type"] == "websocket.disconnect":
                    break
                try:
                    await handle(parse(received.get("text")))
                except Busy as e:  # a lasting message: the page retries until a slot frees
                    await ws.send_json(dict(type="busy", message=str(e)))
                except (ValueError, TypeError) as e:  # UsageError, bad JSON, a prompt the model refuses
                    await ws.send_json(dict(type="error", message=str(e) if isinstance(e, UsageError) else "malformed message"))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:  # whatever ended the connection (the client, the model, the server), the slot and cache are freed
            producer.cancel()
            watcher.cancel()
            try:
                await asyncio.gather(producer, watcher, return_exceptions=True)
            finally:
                lives.pop(sid, None)
                running.discard(sid)
                await on_model(live.close)  # after any step in flight: frees the cache at once

    return app


class Busy(UsageError):
    """Every session slot is taken."""


def parse(text: str | None) -> dict:
    """One socket message: JSON text of a bounded size, an object. UsageError names what is wrong."""
    if text is None:
        raise UsageError("binary messages are not accepted: send JSON text")
    if len(text) > MAX_MESSAGE:
        raise UsageError(f"a message is at most {MAX_MESSAGE} characters")
    try:
        message = json.loads(text)
    except RecursionError:
        raise UsageError("a message nests too deeply") from None
    if not isinstance(message, dict):
        raise UsageError("a message is a JSON object with a \"type\"")
    return message
