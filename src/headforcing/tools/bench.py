"""`headforcing bench`: presets x durations at the real shape (random weights unless given), timed chunk by
chunk after a warm-up: end-to-end, DiT-only and VAE-only FPS, time to first frame, peak memory, cache
bytes, and achieved TFLOP/s against a counted-FLOP model of each chunk. On a CPU it runs the tiny model
as a smoke test of the same path."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ..engine.pipeline import Pipeline, load, peak_memory
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
        groups = [(len(s.heads), (len(s.frames) + C) * T) for s in layer.stores]
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


def run_one(pipe: Pipeline, policy: str, seconds: float, warmup_chunks: int = 2, size=None) -> dict:
    """One timed session after `warmup_chunks` chunks of a warm-up session on the same loaded model; the DiT
    and the VAE are timed through the session's own `timer` hook, around its own step."""
    spec, device = pipe.spec, pipe.device
    warm = pipe.session(PROMPT, policy=policy, size=size)
    for _ in range(warmup_chunks):
        warm.step()
    del warm
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    session = pipe.session(PROMPT, policy=policy, size=size)
    timer, times = Timer(device), {"dit": [], "vae": []}

    def timed(phase, fn, *args):
        out, took = timer(fn, *args)
        times[phase].append(took)
        return out

    session.timer = timed
    latent_frames = latent_frames_for(seconds, spec.fps, spec.chunk_frames, spec.vae_stride[0])
    flops, first_frame_s = 0.0, None
    start = time.perf_counter()
    for _ in range(latent_frames // spec.chunk_frames):
        flops += chunk_flops(session)  # before the chunk: the stores hold exactly the context it attends to
        session.step()
        if first_frame_s is None:
            first_frame_s = time.perf_counter() - start
    total = time.perf_counter() - start
    frames, dit, vae = session.video_frames(), times["dit"], times["vae"]
    return dict(
        policy=policy, seconds=seconds, frames=frames, latent_frames=session.frame,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=str(pipe.dtype).replace("torch.", ""), model=spec.name, size=f"{session.width}x{session.height}",
        e2e_fps=frames / total, dit_fps=frames / sum(dit), vae_fps=frames / sum(vae),
        time_to_first_frame_s=first_frame_s, median_chunk_dit_s=statistics.median(dit),
        median_chunk_vae_s=statistics.median(vae), peak_memory_bytes=peak_memory(device),
        cache_bytes=session.cache.nbytes(), tflops=flops / sum(dit) / 1e12, flops=flops,
    )


def table(rows: list[dict]) -> str:
    head = "| policy | seconds | frames | e2e FPS | DiT FPS | VAE FPS | first frame s | peak GiB | cache MiB | TFLOP/s | device |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['seconds']:g} | {r['frames']} | {r['e2e_fps']:.2f} | {r['dit_fps']:.2f} | {r['vae_fps']:.2f} | "
            f"{r['time_to_first_frame_s']:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} | {r['cache_bytes'] / 2**20:.1f} | "
            f"{r['tflops']:.3f} | {r['device']} |"
        )
    return "\n".join(lines)


def bench(policies: list[str], durations: list[float], model: str, out: str | None, warmup: int = 2, size=None,
          device: str | None = None, dtype: str | None = None) -> list[dict]:
    """Every policy x duration on one loaded model (loaded once)."""
    from ..cache.policy import preset

    for policy in policies:
        preset(policy)  # an unknown name fails before the model loads
    pipe = load(model, device=device, dtype=dtype)
    rows = [run_one(pipe, policy, seconds, warmup, size) for policy in policies for seconds in durations]
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "bench.json").write_text(json.dumps(rows, indent=1))
        Path(out, "bench.md").write_text(table(rows) + "\n")
    return rows
