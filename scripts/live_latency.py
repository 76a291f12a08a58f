"""Live page latency: Enter -> the new prompt's background on screen, measured in headless Chromium.

Starts `headforcing serve` (toy model, default measured buffer unless --buffer-seconds), opens the page, starts
a session, then switches the background colour N times, each after the previous one showed, and times from the
key press to the first canvas frame of the new colour (polled every ~20 ms). Also saves screenshots of the page
at 1280x720 and 800x600. Usage:
    python scripts/live_latency.py --switches 20 --out docs/live_latency.json --screenshots docs/   [--no-skip] [--buffer-seconds S]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

from headforcing.toyworld.world import decode_state

COLOURS = ("red", "blue", "green", "white", "black", "yellow")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def background(page) -> str:
    width, height, pixels = page.evaluate(
        "() => { const c = document.getElementById('video');"
        " return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }")
    return decode_state(np.array(pixels, np.uint8).reshape(height, width, 4)[..., :3])["background"]


def switch(page, colour: str, timeout: float = 60.0) -> float:
    page.fill("#prompt", f"a yellow circle bounces on a {colour} background" if colour != "yellow" else "a red circle bounces on a yellow background")
    start = time.perf_counter()
    page.press("#prompt", "Enter")
    while time.perf_counter() - start < timeout:
        if background(page) == colour:
            return time.perf_counter() - start
        page.wait_for_timeout(20)
    raise RuntimeError(f"the background never turned {colour}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=12)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--buffer-seconds", type=float)
    parser.add_argument("--no-skip", action="store_true", help="untick 'skip ahead': buffered frames of the old prompt play first")
    parser.add_argument("--out", help="JSON with every latency and the summary")
    parser.add_argument("--screenshots", help="folder for live_1280x720.png and live_800x600.png")
    args = parser.parse_args()
    extra = ["--buffer-seconds", str(args.buffer_seconds)] if args.buffer_seconds else []
    server = subprocess.Popen([sys.executable, "-m", "headforcing", "serve", "--port", str(args.port), *extra],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split()[2]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport=dict(width=1280, height=720))
            page.goto(url)
            page.wait_for_selector("#status:has-text('connected')")
            if args.no_skip:
                page.uncheck("#skip")
            switch(page, "green")
            page.wait_for_timeout(2000)  # the chunk time is measured: the buffer settles
            latencies = []
            for i in range(args.switches):
                latencies.append(switch(page, COLOURS[i % 2]))
                page.wait_for_timeout(500)
            if args.screenshots:
                folder = Path(args.screenshots)
                page.fill("#prompt", "a corgi circle and a white square bounce on a blue background")
                page.press("#prompt", "Enter")
                page.wait_for_timeout(3000)
                page.screenshot(path=str(folder / "live_1280x720.png"))
                page.set_viewport_size(dict(width=800, height=600))
                page.wait_for_timeout(1000)
                page.screenshot(path=str(folder / "live_800x600.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    summary = dict(switches=len(latencies), median=statistics.median(latencies), low=min(latencies), high=max(latencies),
                   p90=sorted(latencies)[int(0.9 * (len(latencies) - 1))], latencies=[round(x, 3) for x in latencies],
                   buffer_seconds=args.buffer_seconds, skip_ahead=not args.no_skip, machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
                   date=str(date.today()), command=" ".join(["python", *sys.argv]))
    print(json.dumps({k: v for k, v in summary.items() if k != "latencies"}))
    print("latencies (s):", " ".join(f"{x:.2f}" for x in latencies))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
