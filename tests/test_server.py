"""`headforcing serve`: the real server in a subprocess; the page in headless Chromium; the socket's rules."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from headforcing.toyworld.world import decode_state

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, port: int | None = None):
        self.port = port or free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "headforcing", "serve", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = self.proc.stdout.readline().split()[2]  # "headforcing live: URL  (Ctrl-C stops)"
        # printed once the socket listens: a first request waits in its queue however busy the machine is
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats" + self.query(), timeout=600)

    def query(self) -> str:
        return "?" + self.url.split("?")[1] if "?" in self.url else ""

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats" + self.query()).read())

    def socket(self, query: str = ""):
        for _ in range(200):  # an earlier test's session may still be closing
            if self.stats()["sessions"] == 0:
                break
            time.sleep(0.05)
        return connect(f"ws://127.0.0.1:{self.port}/ws{query}", max_size=None)

    def stop(self) -> int:
        self.proc.send_signal(2)  # Ctrl-C
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def server():
    s = Server("--max-sessions", "1", "--buffer-seconds", "2")
    yield s
    assert s.stop() == 0  # Ctrl-C stops it cleanly


def receive(ws, kind: str, limit: int = 20) -> dict:
    for _ in range(limit):
        message = json.loads(ws.recv(timeout=60))
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message")


def test_a_slot_is_taken_at_start_busy_lasts_and_a_disconnect_frees_it(server):
    """Pages that only connect hold no slot; starting past the slots is answered `busy` (the page keeps the
    message and asks again); the slot frees when its page disconnects, and the waiting page then starts."""
    idle = server.stats()
    with server.socket() as ws, connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None) as other:
        receive(ws, "ready")
        assert receive(other, "ready")["sessions"] == 0 and server.stats()["sessions"] == 0  # connected, no slot
        ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background")))
        chunk = receive(ws, "chunk")
        assert len(chunk["frames"]) == 3 and chunk["frames"][0].startswith("data:image/png;base64,")
        busy = server.stats()
        assert busy["sessions"] == 1 and busy["pages"] == 2 and busy["cache_bytes"] > 0
        other.send(json.dumps(dict(type="start", prompt="a blue square bounces on a white background")))
        assert receive(other, "busy")["message"].startswith("busy: 1 of 1 sessions running")
        ws.close()
        for _ in range(200):  # the page asks again (as the page's script does every 2 s) until a slot frees
            other.send(json.dumps(dict(type="start", prompt="a blue square bounces on a white background")))
            answer = json.loads(other.recv(timeout=60))
            while answer["type"] not in ("busy", "chunk"):
                answer = json.loads(other.recv(timeout=60))
            if answer["type"] == "chunk":
                break
            time.sleep(0.05)
        assert answer["type"] == "chunk" and server.stats()["sessions"] == 1
    for _ in range(100):
        freed = server.stats()
        if freed["sessions"] == 0:
            break
        time.sleep(0.05)
    assert freed["sessions"] == 0 and freed["cache_bytes"] == 0 and freed["threads"] == idle["threads"]


def test_an_idle_session_ends_and_frees_its_slot():
    """--idle-timeout 1: a session whose page sends nothing (no control, no frame played while visible) ends
    with a message, and the page can start again."""
    s = Server("--idle-timeout", "1")
    try:
        with s.socket() as ws:
            assert receive(ws, "ready")["idle_timeout"] == 1
            ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background")))
            receive(ws, "chunk")
            ended = receive(ws, "ended", limit=200)
            assert "without use" in ended["message"] and s.stats()["sessions"] == 0
            ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background")))
            receive(ws, "chunk")
    finally:
        s.stop()


def test_the_buffer_follows_the_measured_chunk_time():
    from headforcing.models.specs import TOY
    from headforcing.server.connection import buffer_frames

    assert buffer_frames(TOY, None, None) == 6  # two chunks until a chunk has been timed
    assert buffer_frames(TOY, 0.05, None) == 3 + 1  # a chunk, and 1.5 x 0.05 s x 4 fps rounded up
    assert buffer_frames(TOY, 1.0, None) == 3 + 6
    assert buffer_frames(TOY, 1.0, 2.0) == 8  # --buffer-seconds wins


def test_bad_messages_get_an_error_and_the_socket_goes_on(server):
    with server.socket() as ws:
        receive(ws, "ready")
        for bad, answer in (("not json", "malformed message"), ("[1, 2]", "JSON object"), ('{"type": "nope"}', "unknown message type"),
                            (json.dumps(dict(type="start", prompt="x" * 501)), "1..500 characters"),
                            (json.dumps(dict(type="start", prompt="a cat", policy="nope")), "policy must be one of"),
                            ('{"type": "played", "frames": "many"}', "frames must be an integer"), ('{"type": "save"}', "nothing to save")):
            ws.send(bad)
            assert answer in receive(ws, "error")["message"], bad
        ws.send(json.dumps(dict(type="start", prompt="a blue square bounces on a white background", policy="self-forcing")))
        assert receive(ws, "chunk")["stats"]["policy"] == "self-forcing"


def test_restart_takes_the_given_prompt_policy_and_seed_and_stop_frees_the_cache(server):
    with server.socket() as ws:
        receive(ws, "ready")
        ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background", policy="headforcing", seed=1)))
        first = receive(ws, "chunk")["stats"]
        assert (first["policy"], first["seed"]) == ("headforcing", 1)
        ws.send(json.dumps(dict(type="restart", prompt="a blue square bounces on a white background", policy="longlive", seed=7)))
        while True:  # chunks of the old session may still be in flight
            chunk = receive(ws, "chunk")
            if chunk["stats"]["policy"] == "longlive":
                break
        assert chunk["stats"]["seed"] == 7 and chunk["stats"]["chunk"] == 1
        assert [c["prompt"] for c in chunk["timeline"]] == ["a blue square bounces on a white background"]
        ws.send(json.dumps(dict(type="restart")))  # nothing given: the session's own first prompt, policy and seed
        while (chunk := receive(ws, "chunk"))["stats"]["chunk"] != 1:
            pass
        assert (chunk["stats"]["policy"], chunk["stats"]["seed"]) == ("longlive", 7)
        ws.send(json.dumps(dict(type="stop")))
        for _ in range(200):
            if server.stats()["cache_bytes"] == 0:
                break
            time.sleep(0.05)
        assert server.stats()["cache_bytes"] == 0


def test_backpressure_waits_for_the_player(server):
    """A client that never reports frames played gets a bounded number of chunks (2 s of video), then none."""
    with server.socket() as ws:
        receive(ws, "ready")
        ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background")))
        got = 0
        try:
            while True:
                got += len(json.loads(ws.recv(timeout=3))["frames"])
        except TimeoutError:
            pass
        assert got == 9  # the buffer of 8 frames, rounded up to whole chunks


def test_a_token_is_required_off_localhost():
    s = Server("--host", "0.0.0.0")
    try:
        token = re.search(r"token=([\w-]+)", s.url).group(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{s.port}/")
        assert refused.value.code == 403
        assert b"headforcing live" in urllib.request.urlopen(f"http://127.0.0.1:{s.port}/?token={token}").read()
        with s.socket("?token=wrong") as ws:
            assert json.loads(ws.recv(timeout=30)) == dict(type="error", message="a token is required")
        with s.socket(f"?token={token}") as ws:
            assert receive(ws, "ready")["type"] == "ready"
    finally:
        s.stop()


def test_another_web_page_cannot_open_the_socket(server):
    """Cross-site WebSocket hijacking: a page from another origin is refused at the handshake; the server's
    own page (same origin) and non-browser clients (no Origin) are served."""
    from websockets.exceptions import InvalidStatus

    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}", "null"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{server.port}/ws", origin=origin)
        assert refused.value.response.status_code == 403, origin
    with server.socket() as ws:  # no Origin
        assert receive(ws, "ready")["type"] == "ready"
    for _ in range(200):
        if server.stats()["sessions"] == 0:
            break
        time.sleep(0.05)
    with connect(f"ws://127.0.0.1:{server.port}/ws", origin=f"http://127.0.0.1:{server.port}") as ws:
        assert receive(ws, "ready")["type"] == "ready"


def test_a_request_for_another_host_name_is_refused(server):
    """DNS rebinding: a page of evil.example whose name now points to 127.0.0.1 sends Host: evil.example."""
    from websockets.exceptions import InvalidStatus

    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/stats", headers={"Host": f"evil.example:{server.port}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 421
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Host": f"evil.example:{server.port}"})
    assert json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{server.port}/stats", headers={"Host": f"localhost:{server.port}"})).read())["sessions"] >= 0
    for path in ("/docs", "/openapi.json", "/redoc"):  # no API pages to read without the token
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}")
        assert missing.value.code == 404


def test_binary_deep_huge_messages_and_unbounded_policies_are_answered(server):
    with server.socket() as ws:
        receive(ws, "ready")
        for bad, answer in ((b"\x00\x01", "binary messages"), ("[" * 5000 + "]" * 5000, "nests too deeply"),
                            ("[" * 100_000, "at most 16384 characters"),
                            (json.dumps(dict(type="start", prompt="a red circle", policy="full")), "cannot run live")):
            ws.send(bad)
            assert answer in receive(ws, "error")["message"], str(bad)[:40]
        ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background")))
        receive(ws, "chunk")
        ws.send('{"type": "save"}')
        receive(ws, "saved")
        ws.send('{"type": "save"}')  # at once again: refused, nothing re-encoded
        assert "one save every" in receive(ws, "error")["message"]


FAULTY = """
import sys, uvicorn
from headforcing.engine.pipeline import load
from headforcing.engine.session import Session
from headforcing.server.app import create_app
real = Session.step
def step(self, *args, **kwargs):
    if self.chunk == 1:  # the second chunk: made before the page's buffer (two chunks at first) is full
        raise RuntimeError("a fault the test injected")
    return real(self, *args, **kwargs)
Session.step = step
from headforcing.cli.serve import listen
sock = listen("127.0.0.1", int(sys.argv[1]))
app = create_app(load("toy"), max_sessions=1)
print("headforcing live: http://127.0.0.1:%s/ (a faulty model)" % sys.argv[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
"""


def test_a_session_that_fails_in_the_model_says_so_and_frees_its_slot():
    """A model that fails in its thread (here a fault injected into Session.step in the real server process): the
    client gets one error, the socket closes, and the slot and cache are free for the next client."""
    s = Server.__new__(Server)
    s.port = free_port()
    s.proc = subprocess.Popen([sys.executable, "-c", FAULTY, str(s.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    s.url = s.proc.stdout.readline().split()[2]
    try:
        for client in range(3):  # with one slot, a leak would make the second client "busy"
            with s.socket() as ws:
                assert receive(ws, "ready")["type"] == "ready", client
                ws.send(json.dumps(dict(type="start", prompt="a red circle bounces on a green background")))
                error = receive(ws, "error")
                assert error["fatal"] and "a fault the test injected" in error["message"]
            for _ in range(200):
                if s.stats()["sessions"] == 0:
                    break
                time.sleep(0.05)
            assert s.stats() | dict(threads=0, rss_mib=0) == dict(sessions=0, pages=0, cache_bytes=0, threads=0, rss_mib=0)
    finally:
        s.proc.terminate()
        s.proc.wait(30)


def test_port_0_prints_the_port_it_got_once_it_listens():
    proc = subprocess.Popen([sys.executable, "-m", "headforcing", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = proc.stdout.readline().split()[2]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert port > 0
        # printed after the socket listens: the first request is answered (it may wait in the queue, never refused)
        assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=120).read())["sessions"] == 0
    finally:
        proc.send_signal(2)
        assert proc.wait(30) == 0


def test_a_port_in_use_is_one_line_before_anything_loads(capsys):
    from headforcing.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Address already in use" in err
    assert main(["serve", "--max-sessions", "0"]) == 2


def canvas(page) -> np.ndarray:
    data = page.evaluate("() => { const c = document.getElementById('video');"
                         " return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }")
    width, height, pixels = data
    return np.array(pixels, np.uint8).reshape(height, width, 4)[..., :3]


def wait_for_background(page, colour: str, timeout: float = 60) -> float:
    start = time.time()
    while time.time() - start < timeout:
        if decode_state(canvas(page))["background"] == colour:
            return time.time() - start
        time.sleep(0.1)
    raise AssertionError(f"the video's background never turned {colour}")


@pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="no Chromium here (`apt-get install chromium`; .ci/run installs it, and under CI=true its absence fails)")
def test_the_page_in_headless_chromium(tmp_path):
    """The page plays the video, Enter switches the prompt while it plays, and "save video" downloads the mp4
    of the session so far with its timeline."""
    from playwright.sync_api import sync_playwright

    from headforcing.utils.video import count_frames

    s = Server()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page()
            downloads = []
            page.on("download", lambda download: downloads.append(download))
            page.goto(s.url)
            page.fill("#prompt", "a yellow circle bounces on a green background")
            page.press("#prompt", "Enter")
            wait_for_background(page, "green")
            page.fill("#prompt", "a yellow circle bounces on a red background")
            page.press("#prompt", "Enter")
            assert wait_for_background(page, "red") < 3 * 3 / 4 + 5  # within a few chunks (a chunk plays in 0.75 s)
            assert "red background" in page.inner_text("#timeline") and "cache MiB" in page.inner_text("#stats")
            page.select_option("#policy", "longlive")  # restart applies the policy, seed and prompt now shown
            page.fill("#seed", "7")
            page.fill("#prompt", "a yellow circle bounces on a blue background")
            page.click("#restart")
            wait_for_background(page, "blue")
            for _ in range(100):
                if "longlive" in page.inner_text("#stats"):
                    break
                page.wait_for_timeout(100)
            stats = page.inner_text("#stats")
            assert "longlive" in stats and "seed\n7" in stats, stats
            page.fill("#prompt", "a yellow circle bounces on a red background")
            page.press("#prompt", "Enter")
            wait_for_background(page, "red")
            page.click("#save")
            for _ in range(100):
                if len(downloads) == 2:
                    break
                page.wait_for_timeout(100)
            files = {}
            for d in downloads:
                files[Path(d.suggested_filename).suffix] = tmp_path / d.suggested_filename
                d.save_as(files[Path(d.suggested_filename).suffix])
            browser.close()
        timeline = json.loads(files[".json"].read_text())
        assert [c["prompt"] for c in timeline] == ["a yellow circle bounces on a blue background", "a yellow circle bounces on a red background"]
        frames = count_frames(files[".mp4"])
        assert frames >= timeline[1]["start_frame"] and frames % 3 == 0
    finally:
        s.stop()


def wait_for_text(page, selector: str, text: str, timeout: float = 60) -> str:
    start = time.time()
    while time.time() - start < timeout:
        shown = page.inner_text(selector)
        if text in shown:
            return shown
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector} never said {text!r}; it says {page.inner_text(selector)!r}")


@pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="no Chromium here (`apt-get install chromium`; .ci/run installs it, and under CI=true its absence fails)")
def test_tabs_share_the_slots_and_the_page_reconnects_in_chromium():
    """One slot: a second tab that presses Enter is told the server is busy, the message stays, and it starts by
    itself when the first tab stops. The toy model's vocabulary is shown and an unknown word is noted on the
    page. After the server restarts on the same port the page reconnects; its controls are disabled meanwhile."""
    from playwright.sync_api import sync_playwright

    s = Server("--max-sessions", "1")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            first, second = browser.new_page(), browser.new_page()
            for page in (first, second):
                page.goto(s.url)
                wait_for_text(page, "#status", "connected")
            assert "words this model knows:" in first.inner_text("#vocabulary") and " circle " in first.inner_text("#vocabulary")
            first.fill("#prompt", "a corgi circle bounces on a green background")
            first.press("#prompt", "Enter")
            wait_for_background(first, "green")
            assert "ignoring corgi" in first.inner_text("#notes")
            second.fill("#prompt", "a yellow circle bounces on a red background")
            second.press("#prompt", "Enter")
            wait_for_text(second, "#status", "busy: 1 of 1 sessions running")
            second.wait_for_timeout(3000)  # asked again meanwhile: the message stays
            assert "busy" in second.inner_text("#status")
            first.click("#stop")
            wait_for_background(second, "red")
            assert "headforcing" in second.inner_text("#stats")
            s.stop()
            wait_for_text(second, "#status", "reconnecting")
            assert second.is_disabled("#restart") and second.is_disabled("#prompt")
            s = Server("--max-sessions", "1", port=s.port)
            wait_for_text(second, "#status", "connected:")
            assert second.is_enabled("#restart")
            second.press("#prompt", "Enter")  # the box still holds the prompt: a new session on the new server
            wait_for_background(second, "red")
            browser.close()
    finally:
        s.stop()


@pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="no Chromium here (`apt-get install chromium`; .ci/run installs it, and under CI=true its absence fails)")
def test_a_paused_page_times_out_in_chromium():
    """--idle-timeout 2: a page that pauses (no control, no frame played) loses its session, says so, frees the
    slot, and Enter starts a new one."""
    from playwright.sync_api import sync_playwright

    s = Server("--idle-timeout", "2")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_page()
            page.goto(s.url)
            wait_for_text(page, "#status", "connected")
            page.fill("#prompt", "a yellow circle bounces on a green background")
            page.press("#prompt", "Enter")
            wait_for_background(page, "green")
            page.click("#pause")
            wait_for_text(page, "#status", "without use")
            assert s.stats()["sessions"] == 0
            page.click("#pause")  # resume playing, then start again
            page.fill("#prompt", "a yellow circle bounces on a red background")
            page.press("#prompt", "Enter")
            wait_for_background(page, "red")
            browser.close()
    finally:
        s.stop()
