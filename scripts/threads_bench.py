"""CPU thread counts, idle and with one core busy: the table behind `headforcing.utils.threads.RECORDED`.

For each model and thread setting (the default, then --threads 1, 2, ... up to the cores), `headforcing
generate` runs in a fresh process, first on an idle machine, then with a child process spinning on one core
beside it (started before and stopped after each run). FPS is generate's own (frames / generation time,
loading excluded). Runs alternate between settings so that drift of the machine hits them alike.

    python scripts/threads_bench.py [--seconds 30] [--tiny-seconds 6] [--repeats 2] [--out threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle bounces on a green background"


def generate(model: str, seconds: float, threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "headforcing", "generate", "--model", model, "--prompt", PROMPT, "--seconds", str(seconds),
               "--quiet", "--out", f"{tmp}/v.mp4"] + ([] if threads is None else ["--threads", str(threads)])
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(re.search(r"([\d.]+) FPS", out).group(1))


class BusyCore:
    """A child process spinning on one core while the block runs."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30, help="toy video length")
    ap.add_argument("--tiny-seconds", type=float, default=6, help="tiny-model video length")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="threads.json")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    settings = [None] + list(range(1, cores + 1))
    rows = []
    for model, seconds in (("toy", args.seconds), ("tiny", args.tiny_seconds)):
        for load in ("idle", "one core busy"):
            runs = {s: [] for s in settings}
            for _ in range(args.repeats):
                for s in settings:
                    if load == "idle":
                        runs[s].append(generate(model, seconds, s))
                    else:
                        with BusyCore():
                            runs[s].append(generate(model, seconds, s))
            for s in settings:
                rows.append(dict(model=model, load=load, threads="default" if s is None else s, fps=runs[s]))
                print(f"{model:5s} {load:14s} threads {rows[-1]['threads']!s:8s} FPS {', '.join(f'{f:.1f}' for f in runs[s])}", flush=True)
    from headforcing.utils.threads import RECORDED

    report = dict(command="python " + " ".join(sys.argv), date=time.strftime("%Y-%m-%d"), cores=cores,
                  machine=f"{platform.machine()} {platform.processor() or ''}".strip(), recorded=RECORDED, rows=rows)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
