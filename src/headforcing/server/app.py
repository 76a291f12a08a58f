"""`headforcing serve`: a live page (FastAPI + uvicorn; Starlette's WebSocket) where the video plays as it is
made and prompts change while it plays. This module wires the routes and guards them (token, Host, Origin);
each socket is a `Connection` (server/connection.py: sessions, slots, backpressure, one method a message).

FastAPI because it is the ASGI stack the peers use for this (Krea Realtime, Daydream Scope), with WebSockets
built in and no build step. One model is loaded for the process and all model work runs on one thread
(sessions share the DiT, whose attention is routed to one cache at a time, and torch releases the GIL), so
the event loop stays free for the sockets.
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from .connection import IDLE_TIMEOUT, PAGES_PER_SLOT, Connection, Hub

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


@dataclass(frozen=True)
class Guards:
    """Who may use the server: the token (None: none needed), the Host names it answers to (None: any) and the
    other origins whose pages may open the socket (beside the page's own)."""

    token: str | None
    hosts: tuple[str, ...] | None
    origins: tuple[str, ...]

    def allowed(self, given: str | None) -> bool:
        return self.token is None or (given is not None and hmac.compare_digest(given, self.token))

    def host_ok(self, headers) -> bool:
        return self.hosts is None or host_name(headers.get("host", "")) in self.hosts

    def socket_ok(self, headers) -> bool:
        return self.host_ok(headers) and same_origin(headers.get("origin"), headers.get("host"), self.origins)


def create_app(pipe, max_sessions: int = 2, token: str | None = None, blend_chunks: int = 0,
               hosts: tuple[str, ...] | None = LOOPBACK, origins: tuple[str, ...] = (),
               idle_timeout: float = IDLE_TIMEOUT, buffer_seconds: float | None = None) -> FastAPI:
    """`hosts`: the names the Host header may give (None: any; a server bound to every interface has a token
    instead); a request for another (DNS rebinding) is refused. `origins`: other origins whose pages may open
    the socket, beside the page's own. `idle_timeout`: seconds without a control or a frame played in a
    visible page before a session ends. `buffer_seconds`: a fixed playback buffer (None: measured)."""
    guards = Guards(token, hosts, tuple(o.lower().rstrip("/") for o in origins))
    hub = Hub(pipe, Path(tempfile.mkdtemp(prefix="headforcing-serve-")), max_sessions, token, blend_chunks, idle_timeout, buffer_seconds)

    @asynccontextmanager
    async def lifespan(app):
        yield
        hub.close()
        shutil.rmtree(hub.folder, ignore_errors=True)

    # no /docs, /redoc or /openapi.json: the page and its socket are the whole interface (docs/LIVE.md)
    app = FastAPI(title="headforcing live", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        if not guards.host_ok(request.headers):
            return Response("unknown Host: this server answers only to the address it was started on", status_code=421)
        return await call_next(request)

    add_page_routes(app, hub, guards)
    add_socket(app, hub, guards)
    return app


def add_page_routes(app: FastAPI, hub: Hub, guards: Guards) -> None:
    """The page, its two assets, the server's numbers and a session's saved videos."""
    static = resources.files("headforcing") / "server" / "static"

    @app.get("/")
    async def page(request: Request):
        if not guards.allowed(request.query_params.get("token")):
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
        if not guards.allowed(request.query_params.get("token")):
            return Response(status_code=403)
        busy = [live.session for live in hub.lives.values() if live.session is not None]
        return JSONResponse(dict(sessions=len(hub.running), pages=len(hub.lives), cache_bytes=sum(s.cache.nbytes() for s in busy), threads=threading.active_count(),
                                 rss_mib=round(rss_bytes() / 2**20, 1)))

    @app.get("/download/{sid}/{name}")
    async def download(sid: str, name: str, request: Request):
        live = hub.lives.get(sid)
        if not guards.allowed(request.query_params.get("token")) or live is None or live.writer is None:
            return Response(status_code=404)
        path = live.writer.path.parent / name
        if path.parent != live.writer.path.parent or not path.is_file() or not name.startswith("video-"):
            return Response(status_code=404)
        return FileResponse(path, filename=f"headforcing-{name}")


def add_socket(app: FastAPI, hub: Hub, guards: Guards) -> None:
    """The live socket: guarded before it is accepted, then one `Connection` per page."""

    @app.websocket("/ws")
    async def live_socket(ws: WebSocket):
        if not guards.socket_ok(ws.headers):
            await ws.close(code=1008)  # before accepting: the handshake fails with 403, nothing is served
            return
        await ws.accept()
        if not guards.allowed(ws.query_params.get("token")):
            await ws.send_json(dict(type="error", message="a token is required"))
            await ws.close(code=1008)
            return
        if len(hub.lives) >= PAGES_PER_SLOT * hub.max_sessions:
            await ws.send_json(dict(type="error", message=f"too many pages open ({len(hub.lives)}): close one and reload", fatal=True))
            await ws.close(code=1013)
            return
        await Connection(hub, ws).run()
