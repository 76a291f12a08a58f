"""Head profiler (against full attention matrices), classification rules, --heads auto, profile CLI."""

import json

import pytest
import torch
from conftest import engine_cache, run_chunks
from oracle import OracleCache

from headforcing.cache.policy import preset
from headforcing.cli import main
from headforcing.errors import UsageError
import headforcing
from headforcing.cache.profiler import CATEGORIES, MAX_DISTANCE, HeadProfiler, classify
from headforcing.tools.profile import run_profile

CHUNKS = 7  # the 21-frame window


def full_matrix_stats():
    """Per (layer, head): each denoising forward's category masses for every query (from the oracle's
    explicit float64 softmax matrices), as an array [observations, queries, categories]."""
    policy = preset("full")
    oracle = OracleCache(policy, policy.resolve_headmap(3, 4))
    oracle.attention_log = []
    run_chunks(oracle, CHUNKS, dtype=torch.float64)
    per_head = {}
    for rec in oracle.attention_log:
        first = rec["first"]
        if rec["commit"] or first // 3 < 3:
            continue
        kf = torch.tensor(rec["key_frames"])
        cat = torch.full_like(kf, 3)
        cat[(kf >= first - 3) & (kf < first)] = 2
        cat[kf >= first] = 1
        cat[kf < 3] = 0
        T = rec["weights"].shape[1] // len(kf)
        mass = rec["weights"].unflatten(1, (len(kf), T)).sum(-1)  # [S, F]
        per_query = mass @ torch.nn.functional.one_hot(cat, 4).double()  # [S, 4]
        per_head.setdefault((rec["layer"], rec["head"]), []).append(per_query)
    return {lh: torch.stack(v) for lh, v in per_head.items()}


def profiled(queries, seed=0):
    policy = preset("full")
    cache = engine_cache(policy, policy.resolve_headmap(3, 4), 21)
    profiler = HeadProfiler(3, 4, queries=queries, seed=seed)
    profiler.attach(cache)
    run_chunks(cache, CHUNKS)
    return profiler.stats()


def test_profiler_equals_full_matrix_statistics_and_samples_within_bound():
    exact = full_matrix_stats()
    everything = profiled(queries=10_000)  # more than the 48 query tokens of a chunk: all of them
    sampled = profiled(queries=12)
    assert everything["denoise"]["observations"] == 16  # chunks 3..6 x 4 steps
    worst_ratio = 0.0
    for (layer, head), per_query in exact.items():
        n_obs, n_q, _ = per_query.shape
        for c, name in enumerate(CATEGORIES):
            truth = per_query[..., c].mean().item()
            assert abs(everything["denoise"][name][layer][head] - truth) < 1e-4
            # sampling 12 of 48 queries (without replacement) in each of 16 observations
            sd = per_query[..., c].std().item()
            se = sd / (12 * n_obs) ** 0.5 * ((n_q - 12) / (n_q - 1)) ** 0.5
            error = abs(sampled["denoise"][name][layer][head] - truth)
            assert error <= 4 * se + 1e-4, (layer, head, name)
            worst_ratio = max(worst_ratio, error / (se + 1e-12))
    assert worst_ratio > 0.01  # the sampled run really sampled
    dist = torch.tensor(everything["denoise"]["distance"])  # [L, H, 21]
    assert dist.shape == (3, 4, MAX_DISTANCE + 1) and torch.allclose(dist.sum(-1), torch.ones(3, 4, dtype=dist.dtype))


def synthetic_stats():
    """12 heads (3 layers x 4): sink mass rises with the head's index, current mass with the reverse."""
    L, H = 3, 4
    sink = [[(l * H + h) / 12 for h in range(H)] for l in range(L)]
    current = [[1 - (l * H + h) / 12 for h in range(H)] for l in range(L)]
    zero = [[0.0] * H for _ in range(L)]
    return {"num_layers": L, "num_heads": H, "denoise": {"sink": sink, "current": current, "previous": zero, "rest": zero}}


def test_default_rule_splits_as_published():
    hm = classify(synthetic_stats())  # 25% of 12 -> 3 anchor (highest sink); 20% of the other 9 -> 2 local
    flat = [r for layer in hm.roles for r in layer]
    assert flat[-3:] == ["anchor"] * 3 and flat[:2] == ["local"] * 2 and flat[2:9] == ["memory"] * 7


def test_threshold_rule():
    hm = classify(synthetic_stats(), "anchor=sink:>=0.75,local=current:>=0.8,memory=rest")
    flat = [r for layer in hm.roles for r in layer]
    assert flat.count("anchor") == 3 and flat[:3] == ["local"] * 3 and flat.count("memory") == 6


@pytest.mark.parametrize(
    "rule, message",
    [
        ("anchor=sink:>=2,memory=rest", "leaves role 'anchor' without heads"),
        ("anchor=sink:top120%,memory=rest", r"must be in \(0%, 100%\]"),
        ("anchor=sink:top25%", "ends with one role=rest"),
        ("anchor=loud:top25%,memory=rest", "unknown statistic 'loud'"),
        ("anchor=sink,memory=rest", "is not role=stat"),
    ],
)
def test_bad_rules(rule, message):
    with pytest.raises(UsageError, match=message):
        classify(synthetic_stats(), rule)


def test_heads_auto_gives_the_map_of_a_separate_profile_run():
    pipe = headforcing.load("tiny", decode=False)
    stats = run_profile(pipe, ["a red ball"], queries=256, seed=5)
    session = pipe.session("a red ball", policy="headforcing", heads="auto", seed=5, decode=False)
    chunks = [session.step().latents for _ in range(9)]
    assert session.headmap == classify(stats) and not session.profiling
    memory = [s for s in session.cache.stores() if s.name == "memory"]
    assert memory and all(s.occupied == s.capacity for s in memory)  # the window's frames were taken over
    again = pipe.session("a red ball", policy="headforcing", heads="auto", seed=5, decode=False)  # profiles afresh
    assert all(torch.equal(a, again.step().latents) for a in chunks)


def test_profile_cli_and_rederive(tmp_path, capsys):
    out = tmp_path / "heads.json"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    assert main(["profile", "--model", "tiny", "--prompts", str(prompts), "--chunks", "5", "--out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert (tmp_path / "heads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["stats"]["denoise"]["observations"] == 2 * 2 * 4  # 2 prompts x chunks 3..4 x 4 steps
    counts = {r: sum(layer.count(r) for layer in data["roles"]) for r in ("anchor", "local", "memory")}
    assert counts == {"anchor": 3, "local": 2, "memory": 7}
    again = tmp_path / "again.json"
    assert main(["profile", "--from", str(out), "--rule", "anchor=sink:top50%,local=current:top50%,memory=rest", "--out", str(again)]) == 0
    assert sum(layer.count("anchor") for layer in json.loads(again.read_text())["roles"]) == 6
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--seconds", "2", "--heads", str(again), "--latents-only", "--quiet"]) == 0
