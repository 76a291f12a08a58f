"""`headforcing serve`: the live page."""

from __future__ import annotations

import signal

from ..errors import UsageError
from ..utils.ranks import world
from .flags import add_compile_arg, add_model_args, add_parallel_arg, add_threads_arg, load_args


def listen(host: str, port: int):
    """The server's listening socket, bound before the model loads (a port in use is one line, at once)."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot serve on {host}:{port}: {e.strerror}") from None
    return sock


def served_hosts(bound: str, extra: list[str]) -> tuple[str, ...] | None:
    """The Host names the server answers to: loopback's names on loopback, the bound address otherwise; None
    (any) when bound to every interface, where the token is the guard."""
    from ..server.app import LOOPBACK, host_name

    if bound in ("0.0.0.0", "::"):
        return None
    names = LOOPBACK if bound in LOOPBACK else (bound,)
    return tuple(names) + tuple(host_name(h) for h in extra)


def serve_flags(sub) -> None:
    srv = sub.add_parser("serve", help="a live page: the video plays as it is made, prompts change while it plays")
    add_threads_arg(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind; any other than this machine's loopback needs a token")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--token", help="required on the page URL and the WebSocket (generated and printed off localhost)")
    srv.add_argument("--max-sessions", type=int, default=2, help="live sessions at once (a page takes a slot when it "
                     "starts one); a page starting past them is told the server is busy and starts when a slot frees")
    srv.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                     help="end a session after this long without a control or a frame played in a visible page (default 600)")
    srv.add_argument("--buffer-seconds", type=float, metavar="SECONDS",
                     help="video the page may hold unplayed (default: measured, one chunk plus 1.5x what plays while one is made)")
    srv.add_argument("--blend-chunks", type=int, default=0, help="blend the text conditioning over N chunks at a prompt switch (0: hard)")
    srv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="a further name the Host header may give (e.g. a reverse proxy's); repeatable. By default only the "
                     "bound address (and localhost on loopback) is answered")
    srv.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                     help="a further origin (https://example.org) whose pages may open the live socket; repeatable. By "
                     "default only the server's own page may")
    add_model_args(srv)
    add_compile_arg(srv)
    add_parallel_arg(srv)


def run_serve(args) -> int:
    import secrets

    if not 1 <= args.max_sessions <= 64 or not 0 <= args.blend_chunks <= 64 or not 0 <= args.port <= 65535:
        raise UsageError("--max-sessions must be 1..64, --blend-chunks 0..64 and --port 0..65535")
    if not 1 <= args.idle_timeout <= 86400 or (args.buffer_seconds is not None and not 0 < args.buffer_seconds <= 60):
        raise UsageError("--idle-timeout must be 1..86400 seconds and --buffer-seconds in (0, 60]")
    local = args.host in ("127.0.0.1", "localhost", "::1")
    token = args.token or (None if local else secrets.token_urlsafe(16))
    bad = [o for o in args.allow_origin if not o.startswith(("http://", "https://"))]
    if bad:
        raise UsageError(f"--allow-origin takes an origin such as https://example.org, got {bad[0]!r}")
    hosts = served_hosts(args.host, args.allow_host)
    leads = not args.parallel or world()[0] == 0  # (serve --parallel heads: rank 0 serves, the others follow it)
    sock = listen(args.host, args.port) if leads else None  # before the model loads
    import uvicorn

    from ..engine.pipeline import load
    from ..server.app import create_app

    pipe = load(args.model, **load_args(args), parallel=args.parallel)
    if args.compile:
        pipe.compile(args.compile)
    if not leads:
        from ..server.mirror import follow

        follow(pipe, args.blend_chunks)
        return 0
    app = create_app(pipe, args.max_sessions, token, args.blend_chunks, hosts, tuple(args.allow_origin),
                     args.idle_timeout, args.buffer_seconds)
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sock.getsockname()[1]  # the one it got, with --port 0
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # uvicorn takes Ctrl-C / SIGTERM over while it serves
    print(f"headforcing live: http://{host}:{port}/" + (f"?token={token}" if token else "") + "  (Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[sock])  # the socket already listens: connections made since the line above wait in its queue
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly and re-raised it (as uvicorn.run, we end there)
        pass
    return 0
