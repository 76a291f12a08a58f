"""A long session on one loaded model: cache bytes and the process's resident memory, every N chunks.

    python scripts/soak_session.py --model tiny --chunks 2000 --every 100 --policy headforcing

The prompt changes every `--switch-every` chunks (cycling through a few), so prompt switches, re-encoding and
the prompt caches are exercised too. Memory must not grow with the number of chunks.
"""

import argparse
import json
import os
import time

import headforcing

PROMPTS = ("a red ball rolls on grass", "a blue cube on a table", "waves on a beach", "a city street at night")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--policy", default="headforcing")
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--switch-every", type=int, default=50)
    ap.add_argument("--out")
    args = ap.parse_args()
    pipe = headforcing.load(args.model)
    session = pipe.session(PROMPTS[0], policy=args.policy)
    rows, start = [], time.perf_counter()
    for index in range(args.chunks):
        if index and index % args.switch_every == 0:
            session.set_prompt(PROMPTS[(index // args.switch_every) % len(PROMPTS)])
        session.step()
        if (index + 1) % args.every == 0:
            stats = session.stats()
            rows.append(dict(chunks=index + 1, video_frames=stats["video_frames"], cache_bytes=stats["cache_bytes"],
                             rss_mib=round(rss_bytes() / 2**20, 1), seconds=round(time.perf_counter() - start, 1),
                             episodic=stats["episodic"]))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
