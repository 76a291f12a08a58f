"""serve --parallel heads: rank 0 serves the pages, every other rank repeats its model work.

A session's chunks run on every rank together (engine/parallel.py), so the ranks must open, step, switch
and close the same sessions in the same order. Rank 0's hub runs each of these calls on its one model
thread; just before running one it broadcasts (page, call, arguments) to the other ranks, which make the
same call on their copy of that page's session (`follow`). Calls that touch no session (saving the mp4)
are not sent. An idle server sends a beat now and then, so the followers' wait never reaches the process
group's timeout. A call that fails fails on every rank alike (the same checks run on the same input); rank 0
tells its page, the followers go on.
"""

from __future__ import annotations

import signal
import threading

import torch.distributed as dist

CALLS = ("start", "step", "set_prompt", "close")  # Live's methods that touch its session
BEAT_S = 60.0


def announce(sid: str | None, call: str, args: tuple = ()) -> None:
    """On rank 0: tell the other ranks which call comes next (sid None: a beat, or the end)."""
    dist.broadcast_object_list([(sid, call, args)], src=0)


def keep_alive(model) -> threading.Event:
    """Send a beat through the model thread every BEAT_S seconds until the returned event is set."""
    done = threading.Event()

    def beat():
        while not done.wait(BEAT_S):
            model.submit(announce, None, "beat").result()

    threading.Thread(target=beat, daemon=True, name="headforcing-beat").start()
    return done


def follow(pipe, blend_chunks: int = 0) -> None:
    """On a rank other than 0: repeat rank 0's session calls until it says the end. Ctrl-C and SIGTERM are
    left to rank 0 (torchrun passes them to every rank): it shuts its server down and then says the end."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sessions = {}
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        sid, call, args = box[0]
        if call == "end":
            return
        try:
            if call == "start":
                prompt, policy, seed = args
                sessions[sid] = pipe.session(prompt, policy=policy, seed=seed, blend_chunks=blend_chunks)
            elif call == "close":
                sessions.pop(sid, None)
            elif call == "step":
                sessions[sid].step()
            elif call == "set_prompt":
                sessions[sid].set_prompt(*args)
        except Exception:  # noqa: BLE001 - rank 0 met the same failure and tells its page
            if call == "start":
                sessions.pop(sid, None)
