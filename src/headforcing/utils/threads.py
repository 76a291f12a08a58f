"""Intra-op CPU threads: as many as the work can use and the machine has free.

A small model on the CPU gains little from more threads, and loses 3x when another process holds one of
the cores they need (the threads wait on each other at every operator; measured in docs/BENCHMARKS.md). So
each model shape has the thread count it can use, measured once by `scripts/threads_bench.py` and recorded
here, and a run takes the smaller of that and the cores that other processes leave free (read from
/proc/stat: the machine's busy time less this process's own, over the last interval; at load a 0.1 s look).
Sessions look again when they open. A shape not measured keeps torch's default. What the user sets always
wins: `--threads N`, OMP_NUM_THREADS (torchrun sets it to 1 for ranks that share a machine), or
`torch.set_num_threads` called after importing headforcing. Seeded training (`toyworld train`) takes the
recorded count whatever the load (`pin`): another count rounds floats otherwise, and a seeded run must give
the same weights every time.
"""

from __future__ import annotations

import os
import time

import torch

# model name -> intra-op threads its shape can use on the CPU, measured by scripts/threads_bench.py
RECORDED = {"toy": 2, "tiny": 2}

_at_import = torch.get_num_threads()
_chosen: int | None = None  # --threads, once given
_fitted: str | None = None  # the model whose count we set
_last: tuple[float, float, float] | None = None  # (wall, machine busy core-seconds, our CPU seconds)


def user_set() -> bool:
    """Did the user choose a thread count (flag, environment, or torch.set_num_threads since our import)?"""
    return (_chosen is not None or "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ
            or torch.get_num_threads() != _at_import)


def use(n: int) -> None:
    """`--threads N`: this process computes with N intra-op threads, whatever model it loads."""
    global _chosen, _at_import
    torch.set_num_threads(n)
    _chosen = _at_import = n


def _sample() -> tuple[float, float, float] | None:
    """(wall seconds, busy core-seconds of the whole machine, CPU seconds of this process); None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    mine = os.times()
    return time.monotonic(), (sum(fields[:8]) - idle) / tick, mine.user + mine.system


def free_cores(wait: float = 0.0) -> float | None:
    """Cores that other processes leave free, over the interval since the last look (or `wait` seconds)."""
    global _last
    if wait or _last is None:
        _last = _sample()
        time.sleep(wait or 0.1)
    now = _sample()
    if now is None or _last is None or now[0] - _last[0] < 0.05:
        return None
    others = max(0.0, (now[1] - _last[1]) - (now[2] - _last[2])) / (now[0] - _last[0])
    _last = now
    return (os.cpu_count() or 1) - others


def fit(model: str, device: torch.device | str = "cpu", wait: float = 0.1) -> int:
    """Before a model runs on the CPU: its recorded thread count, capped by the free cores, unless the user
    chose. Returns the count in use."""
    global _at_import, _fitted
    if torch.device(device).type != "cpu" or user_set() or model not in RECORDED:
        return torch.get_num_threads()
    free = free_cores(wait)
    if free is None and not wait:  # looked too recently to tell: keep the count
        return torch.get_num_threads()
    n = RECORDED[model] if free is None else max(1, min(RECORDED[model], round(free)))
    torch.set_num_threads(n)
    _at_import, _fitted = n, model  # ours, not the user's: a later look may change it
    return n


def pin(model: str) -> int:
    """For work that must give the same numbers every run (seeded training): the model's recorded count, not
    capped by the machine's load (a thread count changes float rounding), unless the user chose."""
    global _at_import, _fitted
    if user_set() or model not in RECORDED:
        return torch.get_num_threads()
    torch.set_num_threads(RECORDED[model])
    _at_import, _fitted = RECORDED[model], None  # (sessions do not look again)
    return RECORDED[model]


def refit() -> int:
    """A session opens: look again at the free cores (no waiting: over the time since the last look)."""
    return fit(_fitted, "cpu", wait=0.0) if _fitted is not None else torch.get_num_threads()
