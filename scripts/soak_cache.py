"""Constant memory over a long run: a session's cache bytes and the process's resident memory at chunk checkpoints.

    python scripts/soak_cache.py --policy headforcing-retrieval --chunks 2000
"""

from __future__ import annotations

import argparse
import json

import headforcing
from headforcing.server.app import rss_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="headforcing-retrieval")
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--model", default="toy")
    args = parser.parse_args()
    pipe = headforcing.load(args.model)
    session = pipe.session("a red circle and a blue square bounce on a green background", policy=args.policy, decode=False)
    marks = {100, 500, 1000, args.chunks} | {args.chunks // 2}
    for chunk in range(1, args.chunks + 1):
        session.step()
        if chunk in marks:
            archive = [s.archive.held for s in session.cache.stores() if s.archive is not None]
            print(json.dumps(dict(chunk=chunk, cache_bytes=session.cache.nbytes(), rss_mib=round(rss_bytes() / 2**20, 1),
                                  archive_held=max(archive) if archive else None)), flush=True)


if __name__ == "__main__":
    main()
