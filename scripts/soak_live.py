"""Live generation for a while through the real server: a WebSocket client that plays frames at the video's
rate (acknowledging them as the page does) and switches the prompt every --switch seconds; the server's
memory and cache are read from /stats every --every seconds.

    headforcing serve --port 8799 &
    python scripts/soak_live.py --port 8799 --minutes 10 --switch 20
"""

import argparse
import json
import time
import urllib.request

from websockets.sync.client import connect

PROMPTS = ("a red circle bounces on a green background", "a blue square bounces on a white background",
           "a yellow triangle bounces on a black background", "a white circle and a red square bounce on a blue background")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--switch", type=float, default=20)
    ap.add_argument("--every", type=float, default=60)
    args = ap.parse_args()
    stats = lambda: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/stats").read())  # noqa: E731
    rows, chunks, played, switches, sizes = [], 0, 0, 0, []
    with connect(f"ws://127.0.0.1:{args.port}/ws", max_size=None) as ws:
        ready = json.loads(ws.recv())
        fps = ready["fps"]
        ws.send(json.dumps(dict(type="start", prompt=PROMPTS[0])))
        start = last_switch = last_row = time.monotonic()
        while time.monotonic() - start < args.minutes * 60:
            message = ws.recv()
            m = json.loads(message)
            assert m["type"] == "chunk", m
            chunks += 1
            sizes.append(len(message))
            time.sleep(len(m["frames"]) / fps)  # played in real time
            played += len(m["frames"])
            ws.send(json.dumps(dict(type="played", frames=played)))
            now = time.monotonic()
            if now - last_switch >= args.switch:
                switches += 1
                ws.send(json.dumps(dict(type="prompt", prompt=PROMPTS[switches % len(PROMPTS)])))
                last_switch = now
            if now - last_row >= args.every:
                rows.append(dict(minute=round((now - start) / 60, 2), chunks=chunks, frames=played, switches=switches, **stats()))
                print(json.dumps(rows[-1]), flush=True)
                last_row = now
    print(json.dumps(dict(done=True, chunks=chunks, frames=played, switches=switches, bytes_per_chunk=sum(sizes) / len(sizes),
                          after_close=stats())), flush=True)


if __name__ == "__main__":
    main()
