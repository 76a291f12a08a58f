"""`headforcing profile`: run the model inside its window with the full cache and a HeadProfiler."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.files import check_output, read_json, read_text
from ..errors import UsageError
from ..engine.pipeline import Pipeline, load
from ..cache.profiler import HeadProfiler, classify, heads_file, plot
from ..engine.profiles import install

DEFAULT_PROMPTS = (
    "a red fox trots through fresh snow in a pine forest, morning light",
    "a busy city street at night, cars and neon signs reflected on wet asphalt",
    "waves roll onto a rocky beach under a cloudy sky, the camera slowly pans",
    "a chef slices vegetables on a wooden board in a bright kitchen",
)


def read_prompts(path: str | None, model: str = "wan2.1-1.3b") -> list[str]:
    """A file's prompts; by default a few scenes (for the toy model: captions of its world)."""
    if path is None and model == "toy":
        from ..models.toy import PROFILE_PROMPTS

        return list(PROFILE_PROMPTS)
    if path is None:
        return list(DEFAULT_PROMPTS)
    prompts = [line.strip() for line in read_text(path, "prompts").splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{path} holds no prompt")
    return prompts


def run_profile(pipe: Pipeline, prompts: list[str], queries: int, chunks: int = 7, seed: int = 0, **options) -> dict:
    """Statistics over all prompts: one loaded model, one profiler, a `full` session per prompt (same seed)."""
    spec = pipe.spec
    profiler = HeadProfiler(spec.num_layers, spec.num_heads, spec.chunk_frames, queries, seed=seed)
    for prompt in prompts:
        session = pipe.session(prompt, policy="full", seed=seed, decode=False, **options)
        profiler.attach(session.cache)
        for _ in range(chunks):
            session.step()
    return profiler.stats()


def profile(args, load_args: dict, session_args: dict) -> Path:
    out = check_output(args.out, "--out", ".json")  # before the ~minute of profiling
    check_output(out.with_suffix(".png"), "--out's plot")
    if args.source:
        data = read_json(args.source, "statistics")
        stats = data.get("stats", data) if isinstance(data, dict) else None
        if not isinstance(stats, dict) or "denoise" not in stats:
            raise UsageError(f"{args.source} holds no profile statistics")
        weights = data.get("weights")
    else:
        window = 21 // 3
        if not 4 <= args.chunks <= window:
            raise UsageError(f"--chunks must be 4..{window}: statistics start at chunk 3, inside the 21-frame window")
        prompts = read_prompts(args.prompts, args.model)
        pipe = load(args.model, decode=False, **load_args)
        stats = run_profile(pipe, prompts, args.queries, args.chunks, **session_args)
        weights = pipe.fingerprint()
    headmap = classify(stats, args.rule)
    data = heads_file(headmap, stats, args.rule)
    if isinstance(weights, str):
        data["weights"] = weights  # the fingerprint a default map is looked up by (engine/profiles.py)
    out.write_text(json.dumps(data))
    plot(headmap, stats, out.with_suffix(".png"))
    if args.install:
        if "weights" not in data:
            raise UsageError(f"{args.source} does not say which weights it was measured on: run the profile again to --install it")
        print(f"installed as the default roles for these weights: {install(data)}")
    return out
