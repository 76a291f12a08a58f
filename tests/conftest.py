import os
import tempfile
from pathlib import Path

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from headforcing.cache.headwise import HeadwiseCache
from headforcing.models.specs import TINY, build_transformer
from headforcing.engine.sampler import ChunkSampler, SeededNoise

from headforcing.utils import threads

# the tests' models are small: 2 threads, or 1 when another process holds a core; chosen once and kept (as
# `--threads N` is), so that two sessions of one test never run with different counts, whose float rounding
# differs (sessions otherwise look at the machine's load again when they open; test_threads.py tests that).
# Under pytest-xdist the workers share the cores: each takes at most its share, whatever the load looked like at
# its start (two workers that both saw an idle machine took 2 threads each on 2 cores, and the suite ran 2-3x
# slower: 1054 s and 1399 s in clean clones against 442 s; docs/BENCHMARKS.md has why)
workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
threads.use(min(threads.fit("tiny", "cpu"), max(1, (os.cpu_count() or 1) // workers)))
diffusers_logging.set_verbosity_error()  # the oracle casts the whole tiny model to float64 on purpose

ROOT = Path(__file__).resolve().parents[1]
# default head roles come from profiles keyed by the weights (engine/profiles.py): none of the user's own here
os.environ["HEADFORCING_PROFILES"] = tempfile.mkdtemp(prefix="headforcing-profiles-")


def shared_dir() -> Path:
    return Path(os.environ.get("HEADFORCING_SHARED", ROOT.parent / "shared"))


def golden(name: str) -> Path:
    path = shared_dir() / "golden" / name
    if not path.exists():
        pytest.skip(f"golden recording {path} is absent (set HEADFORCING_SHARED to the shared/ folder)")
    return path


def text(seed: int = 1) -> torch.Tensor:
    """A tiny-model text context [1, text_len, text_dim]."""
    return torch.randn(1, TINY.text_len, TINY.transformer["text_dim"], generator=torch.Generator().manual_seed(seed))


def run_chunks(cache, num_chunks: int, latent_hw=(4, 4), dtype=torch.float32, seed=0, transformer=None,
               on_chunk=None, switch_at=None):
    """Generate `num_chunks` chunks of the tiny model through `cache`; latents [1, F, C, h, w] float32.
    switch_at: from that chunk on the prompt changes, and `recache` roles re-encode their recent frames."""
    transformer = transformer or build_transformer(TINY, seed=3)
    transformer = transformer.to(dtype)
    sampler = ChunkSampler(transformer, cache, chunk_frames=TINY.chunk_frames)
    if hasattr(cache, "install"):  # the oracle brings its own attention processors
        cache.install(transformer)
    chw = (TINY.latent_channels, *latent_hw)
    sampler.start(1, chw)
    noise, out, context = SeededNoise(seed), [], text()
    for i in range(num_chunks):
        if i == switch_at:
            context = text(seed=2)
            frames = min(cache.policy.recache_frames, 3 * i)
            if frames:
                sampler.recache(torch.cat(out, dim=1)[:, -frames:], 3 * i - frames, context)
        out.append(sampler.chunk(i, context, noise, 1, chw))
        if on_chunk:
            on_chunk(i, cache)
    return torch.cat(out, dim=1)


def engine_cache(policy, headmap, window_frames: int, **kw) -> HeadwiseCache:
    return HeadwiseCache(policy, headmap, TINY.head_dim, window_frames, TINY.chunk_frames, keep_log=True, **kw)
