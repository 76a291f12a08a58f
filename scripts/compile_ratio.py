"""Eager vs compiled (torch.compile, fullgraph) chunk time of the toy model, measured in one process.

For each policy: two sessions on one loaded model, one eager and one through the compiled DiT, both past
their warm-up (the compiled one has compiled its graphs); then their steady chunks are timed in alternating
blocks, so that the machine's background load falls on both alike. Prints a markdown table and the ratio.

    python scripts/compile_ratio.py --policies self-forcing,headforcing --chunks 120
"""

import argparse
import json
import statistics
import time

import torch

import headforcing
from headforcing.cache.policy import preset
from headforcing.models.specs import TOY
from headforcing.tools.bench import TOY_PROMPT


def steady_session(pipe, policy, compiled):
    pipe.compiled = compiled
    session = pipe.session(TOY_PROMPT, policy=policy, decode=False)
    while session.chunk < preset(policy).warmup_chunks(TOY.chunk_frames, TOY.trained_frames) + 2:
        session.step()  # fills the cache; the compiled session compiles its two graphs here
    return session


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies", default="self-forcing,headforcing")
    parser.add_argument("--chunks", type=int, default=120, help="timed chunks per session")
    parser.add_argument("--block", type=int, default=10, help="chunks per alternating block")
    args = parser.parse_args()
    pipe = headforcing.load("toy")
    rows = []
    for policy in args.policies.split(","):
        pipe.compile()
        compiled = pipe.compiled
        start = time.perf_counter()
        fast = steady_session(pipe, policy, compiled)
        warmup_s = time.perf_counter() - start
        slow = steady_session(pipe, policy, None)
        times = {"eager": [], "compiled": []}
        for _ in range(args.chunks // args.block):
            for name, session in (("eager", slow), ("compiled", fast)):
                for _ in range(args.block):
                    t = time.perf_counter()
                    session.step()
                    times[name].append(time.perf_counter() - t)
        eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled"])
        stats = fast.stats()["compile"]
        rows.append(dict(policy=policy, eager_ms=eager * 1e3, compiled_ms=comp * 1e3, speedup=eager / comp,
                         warmup_and_compile_s=warmup_s, recompiles=stats["recompiles"], graphs=stats["graphs"],
                         chunks=args.chunks, threads=torch.get_num_threads()))
    print("| policy | eager ms/chunk | compiled ms/chunk | eager / compiled | warm-up incl. compile s | graphs | recompiles |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['speedup']:.2f} | "
              f"{r['warmup_and_compile_s']:.1f} | {r['graphs']} | {r['recompiles']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
