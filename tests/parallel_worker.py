"""Run under `torchrun --nproc-per-node 2` by test_parallel.py: one stream on two ranks (--parallel heads)
against the same stream in one process, for every preset on the toy and the tiny model; saves and resumes
across rank counts; a compiled step. Rank 0 writes what it measured to the JSON file named by argv[1]; the
test asserts on it."""

import json
import sys

import torch
import torch.distributed as dist

from headforcing.cache.policy import PRESETS
from headforcing.engine.parallel import sent_per_chunk
from headforcing.engine.pipeline import join_ranks, load

SWITCH = "a blue square and a green circle"


def run(pipe, policy, chunks, heads=None, resume=None, save_at=None, path=None, until=None):
    """Latents [1, F, C, h, w] of the chunks made up to `until` (default: `chunks`, with a prompt switch at
    half of them), and the session."""
    s = pipe.resume(resume) if resume else pipe.session("a red circle", policy=policy, seed=3, heads=heads, decode=False)
    out = []
    while s.chunk < (until or chunks):
        if s.chunk == chunks // 2:
            s.set_prompt(SWITCH)
        out.append(s.step().latents)
        if s.chunk == save_at:
            s.save(path)
    return torch.cat(out, 1), s


def head_share(one_cache, split) -> int:
    """The bytes this rank's heads take in the one-process cache (each store's per-head bytes x its heads here)."""
    total = 0
    for layer, owned in zip(one_cache.layers, split.owned):
        for store in layer.stores:
            total += store.head_bytes() // len(store.heads) * len(set(owned) & set(store.model_heads))
    return total


def everyone(value):
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def main(out_path: str, state_dir: str) -> None:
    results = {}
    for model, chunks in (("toy", 10), ("tiny", 9)):  # (27-30 frames: past the window, episodic decisions made)
        one, par = load(model), load(model, parallel="heads")
        rows = {}
        for policy, heads in [(p, None) for p in PRESETS] + [("headforcing", "auto")]:
            n = 7 if policy == "full" else chunks  # (full keeps every frame: the trained window only)
            before = par.parallel.sent_bytes
            a, s1 = run(one, policy, n, heads)
            b, s2 = run(par, policy, n, heads)
            rows[policy + ("+auto" if heads else "")] = dict(
                diff=(a - b).abs().max().item(), one_head_bytes=s1.cache.head_bytes(),
                rank_head_bytes=everyone(s2.cache.head_bytes()), rank_expected=everyone(head_share(s1.cache, s2.cache.split)),
                imbalance=s2.cache.split.imbalance, sent=par.parallel.sent_bytes - before)
        results[model] = rows
        # a state saved on 2 ranks resumes on 2 and on 1; one saved on 1 resumes on 2
        saved2, saved1 = f"{state_dir}/{model}-2.safetensors", f"{state_dir}/{model}-1.safetensors"
        whole, _ = run(par, "headforcing", chunks, save_at=5, path=saved2)
        run(one, "headforcing", chunks, save_at=5, path=saved1, until=5)
        dist.barrier()
        resumed = dict(on2=run(par, None, chunks, resume=saved2)[0], on1=run(one, None, chunks, resume=saved2)[0],
                       from1_on2=run(par, None, chunks, resume=saved1)[0])
        tail = whole[:, -resumed["on2"].shape[1]:]
        results[model + "-resume"] = {k: (tail - v).abs().max().item() for k, v in resumed.items()}
        # bytes sent per chunk: measured over one eager chunk, and computed
        s = par.session("a red circle", policy="self-forcing", decode=False)
        s.step()
        before = par.parallel.sent_bytes
        s.step()
        T = s.cache.rope.tokens_per_frame
        results[model + "-sent"] = dict(measured=par.parallel.sent_bytes - before,
                                        computed=sent_per_chunk(par.spec, T, 2, len(s.sampler.timesteps) + 1, 4))
    # a compiled step (traced as inductor traces, without generating code)
    one, par = load("toy"), load("toy", parallel="heads")
    par.compile("default", "eager")
    a, _ = run(one, "headforcing", 12)
    b, s = run(par, "headforcing", 12)
    results["compiled"] = dict(diff=(a - b).abs().max().item(), **s.stats()["compile"])
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    join_ranks(None)
    main(sys.argv[1], sys.argv[2])
