"""`headforcing bench`: presets x durations at the real shape (random weights unless given), timed chunk by
chunk after a warm-up: end-to-end, DiT-only and VAE-only FPS, time to first frame, peak memory, cache
bytes, achieved TFLOP/s against a counted-FLOP model of each chunk, and (with --compile) recompiles. On a
CPU it runs the tiny model as a smoke test of the same path. `--gpu-report DIR` is the one GPU script:
eager vs compiled vs CUDA graphs, every row written as it comes."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ..engine.pipeline import Pipeline, peak_memory
from ..engine.timeline import latent_frames_for


def forward_flops(config: dict, tokens: int, text_len: int, groups: list[tuple[int, int]], text_kv: bool = True) -> float:
    """Multiply-add FLOPs (x2) of one DiT forward over `tokens` query tokens; groups: (heads, key tokens)
    of each role group's attention; the text is `text_len` tokens, its cross-attention K/V projected in this
    forward if `text_kv` (not when the prompt cache holds them)."""
    hd, H, L = config["attention_head_dim"], config["num_attention_heads"], config["num_layers"]
    d, f, s = hd * H, config["ffn_dim"], tokens
    self_proj = 4 * 2 * s * d * d  # q, k, v, out
    self_attn = sum(2 * 2 * s * keys * hd * heads for heads, keys in groups)  # QK^T and AV
    text = 2 * 2 * text_len * d * d if text_kv else 0  # k, v of the prompt
    cross = 2 * 2 * s * d * d + text + 2 * 2 * s * text_len * d  # q, out; k, v; attention
    ffn = 2 * 2 * s * d * f
    return float(L * (self_proj + self_attn + cross + ffn))


def chunk_flops(session) -> float:
    """FLOPs of a session's next chunk's forwards (denoising steps + the commit pass), from the cache as it
    stands (the prompt's cross-attention K/V are cached, so not counted)."""
    T = session.cache.rope.tokens_per_frame
    C = session.spec.chunk_frames
    forwards = len(session.sampler.timesteps) + 1
    total = 0.0
    for layer in session.cache.layers:  # per layer: its own groups (their sizes can differ by layer)
        groups = [(len(s.heads), (s.occupied + C) * T) for s in layer.stores]
        total += forward_flops({**session.spec.transformer, "num_layers": 1}, C * T, session.spec.text_len, groups, text_kv=False)
    return forwards * total


class Timer:
    """Wall time of a call on the CPU, CUDA events on a GPU (read after a sync at the end of the chunk)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, *args):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args)
            end.record()
            end.synchronize()
            return out, start.elapsed_time(end) / 1000
        t = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t


PROMPT = "a drone shot over a coastline at sunset"
TOY_PROMPT = "a red circle and a blue square bounce on a green background"  # in the toy model's grammar


def prompt_for(pipe: Pipeline) -> str:
    return TOY_PROMPT if pipe.spec.name == "toy" else PROMPT


def warm_up(pipe: Pipeline, policy: str, chunks: int, size) -> None:
    """A throw-away session on the same model: kernels chosen, caches allocated once; with a compiled DiT it
    runs until two chunks have gone through the compiled graphs (so the timed session compiles nothing)."""
    warm = pipe.session(prompt_for(pipe), policy=policy, size=size)
    while warm.chunk < chunks or (pipe.compiled is not None and warm.sampler.compile_stats["compiled_chunks"] < 2):
        warm.step()


def run_session(pipe: Pipeline, policy: str, durations: list[float], warmup_chunks: int = 2, size=None) -> list[dict]:
    """One timed session, long enough for the longest duration, after a warm-up session on the same loaded
    model; a row per duration from the chunks that make it (the first 10 s of a 60 s session are a 10 s
    run: sessions do not know their end). DiT and VAE are timed through the session's own `timer` hook."""
    spec, device = pipe.spec, pipe.device
    warm_up(pipe, policy, warmup_chunks, size)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    session = pipe.session(prompt_for(pipe), policy=policy, size=size)
    timer, times = Timer(device), {"dit": [], "vae": []}

    def timed(phase, fn, *args):
        out, took = timer(fn, *args)
        times[phase].append(took)
        return out

    session.timer = timed
    ends = {latent_frames_for(d, spec.fps, spec.chunk_frames, spec.vae_stride[0]) // spec.chunk_frames: d for d in durations}
    rows, flops, first_frame_s = [], 0.0, None
    sent = []  # bytes this rank sent per eager chunk (--parallel heads)
    start = time.perf_counter()
    while session.chunk < max(ends):
        flops += chunk_flops(session)  # before the chunk: the stores hold exactly the context it attends to
        before = pipe.parallel.sent_bytes if pipe.parallel is not None else 0
        session.step()
        if pipe.parallel is not None and pipe.parallel.sent_bytes > before:
            sent.append(pipe.parallel.sent_bytes - before)
        if first_frame_s is None:
            first_frame_s = time.perf_counter() - start
        if session.chunk in ends:
            rows.append(row(pipe, session, ends[session.chunk], time.perf_counter() - start, times, flops, first_frame_s))
            if pipe.parallel is not None:
                rows[-1] |= dict(session.stats()["parallel"], sent_bytes_per_chunk=statistics.median(sent) if sent else None)
    return rows


def row(pipe: Pipeline, session, seconds: float, total: float, times: dict, flops: float, first_frame_s: float) -> dict:
    spec, device = pipe.spec, pipe.device
    frames, dit, vae = session.video_frames(), times["dit"], times["vae"]
    compiled = session.stats()["compile"]
    return dict(
        policy=session.options.policy, seconds=seconds, frames=frames, latent_frames=session.frame,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=str(pipe.dtype).replace("torch.", ""), model=spec.name, size=f"{session.width}x{session.height}",
        compile=compiled["mode"] if compiled else "eager", recompiles=compiled["recompiles"] if compiled else 0,
        compiled_chunks=compiled["compiled_chunks"] if compiled else 0,
        e2e_fps=frames / total, dit_fps=frames / sum(dit), vae_fps=frames / sum(vae),
        time_to_first_frame_s=first_frame_s, median_chunk_dit_s=statistics.median(dit),
        median_chunk_vae_s=statistics.median(vae), peak_memory_bytes=peak_memory(device),
        cache_bytes=session.cache.nbytes(), tflops=flops / sum(dit) / 1e12, flops=flops,
    )


def table(rows: list[dict]) -> str:
    head = ("| policy | compile | seconds | frames | e2e FPS | DiT FPS | VAE FPS | first frame s | peak GiB | cache MiB | "
            "TFLOP/s | recompiles | device |")
    ranks = any("ranks" in r for r in rows)
    lines = [head + (" ranks | head imbalance | MiB sent per chunk |" if ranks else ""), "|" + "---|" * (16 if ranks else 13)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['policy']} | {r['compile']} | {r['seconds']:g} | failed: {r['error']} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['policy']} | {r['compile']} | {r['seconds']:g} | {r['frames']} | {r['e2e_fps']:.2f} | {r['dit_fps']:.2f} | "
            f"{r['vae_fps']:.2f} | {r['time_to_first_frame_s']:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} | "
            f"{r['cache_bytes'] / 2**20:.1f} | {r['tflops']:.3f} | {r['recompiles']} | {r['device']} |"
            + (f" {r['ranks']} | {r['imbalance']:.1%} | {(r['sent_bytes_per_chunk'] or 0) / 2**20:.2f} |" if "ranks" in r else "")
        )
    return "\n".join(lines)


def bench(pipe, policies: list[str], durations: list[float], out: str | None = None, warmup: int = 2, size=None) -> list[dict] | None:
    """Every policy x duration on one loaded model; compiled for steady chunks if the pipeline is
    (`pipe.compile`); one stream over a torchrun launch's ranks if it was loaded with parallel="heads" (rank 0
    writes and returns the rows, with the ranks, the head imbalance and the bytes each rank sent per chunk; the
    others return None)."""
    rows = [r for policy in policies for r in run_session(pipe, policy, durations, warmup, size)]
    if pipe.parallel is not None and not pipe.parallel.leads:
        return None
    if out:
        write(out, rows)
    return rows


def write(out: str, rows: list[dict], name: str = "bench") -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"{name}.json").write_text(json.dumps(rows, indent=1))
    Path(out, f"{name}.md").write_text(table(rows) + "\n")


GPU_MODES = ("eager", "default", "reduce-overhead")


def gpu_report(pipe, out: str, durations=(10.0, 60.0), policies=("self-forcing", "headforcing"), size=None, log=print,
               modes=GPU_MODES, budget_s: float = 480.0) -> list[dict]:
    """The whole GPU measurement in one go (within 10 minutes on one H100/H200): eager, torch.compile and CUDA
    graphs x policies x durations, at the model's size (832x480 for Wan) with random weights. Rows are written
    as they come (DIR/gpu.json, DIR/gpu.md) from one loaded model, so a run cut short still leaves what it measured; a mode that fails
    is a row saying why, and the next one runs; past `budget_s` (compiling the 30-block DiT takes minutes) the
    remaining rows say they were skipped."""
    deadline = time.perf_counter() + budget_s
    rows = []
    for mode in modes:
        pipe.compiled = None
        torch._dynamo.reset()  # each mode compiles afresh (and none inherits another's recompile budget)
        for policy in policies:
            try:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"skipped, past the {budget_s:g} s budget")
                if mode != "eager" and pipe.compiled is None:
                    pipe.compile(mode)
                rows += run_session(pipe, policy, list(durations), size=size)
            except Exception as e:  # noqa: BLE001 - a report row says what failed; the other modes still run
                rows += [dict(policy=policy, compile=mode, seconds=d, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
                         for d in durations]
            write(out, rows, "gpu")
            log(table(rows[-len(durations):]).splitlines()[-1])
    return rows
