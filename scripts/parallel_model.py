"""Expected speed-up of `--parallel heads` on P GPUs, computed (not measured) from one H200's measured DiT costs.

The model (docs/SCALING.md): a forward over a 3-frame chunk costs 44 ms with no cache and 3.44 ms more per
cached frame that all 12 heads attend to (../shared/DESIGN.md: 44 / 75 / 106 ms at 0 / 9 / 18 frames, H200,
832x480, bf16), so 33.7 ms of it is projections, cross-attention and FFN and 3.44 ms per key frame is
self-attention. On P ranks the first part divides by P (each rank its tokens), the second by P times the
head imbalance (each rank its heads, the slowest rank sets the pace), and the all-to-alls add their bytes at
an effective 400 GB/s (NVLink, not overlapped). 1280x720 has 10,800 tokens a chunk instead of 4,680: the
first part scales with tokens, attention with their square. The VAE (250 ms a chunk) runs on rank 0 after
the DiT. P must divide the 12 heads, so 8 GPUs are not a choice (6 is).

    python scripts/parallel_model.py
"""

from headforcing.cache.policy import preset
from headforcing.engine.parallel import assign, head_costs, imbalance, sent_per_chunk
from headforcing.models.specs import WAN_1_3B

LINEAR_MS, PER_FRAME_MS, VAE_MS, FORWARDS, LINK = 33.7, 3.44, 250.0, 5, 400e9
SIZES = {"832x480": 1560, "1280x720": 3600}  # tokens per latent frame


def chunk_ms(policy_name: str, ranks: int, tokens_per_frame: int, balanced: bool = True) -> tuple[float, float, float]:
    """(DiT ms a chunk, head imbalance, MB each rank sends a chunk); balanced=False: heads in index order."""
    spec = WAN_1_3B
    policy = preset(policy_name, spec.chunk_frames, spec.trained_frames)
    costs = head_costs(policy, policy.resolve_headmap(spec.num_layers, spec.num_heads), spec.trained_frames, spec.chunk_frames)
    lost = imbalance(costs, assign(costs, ranks, balanced)) if ranks > 1 else 0.0
    mean_keys = sum(map(sum, costs)) / (spec.num_layers * spec.num_heads)  # key frames per head, the chunk's included
    scale = tokens_per_frame / 1560
    linear = LINEAR_MS * scale / ranks
    attention = PER_FRAME_MS * mean_keys * scale**2 * (1 + lost) / ranks
    sent = sent_per_chunk(spec, tokens_per_frame, ranks, FORWARDS, 2) if ranks > 1 else 0.0
    return FORWARDS * (linear + attention) + sent / LINK * 1e3, lost, sent / 1e6


def main() -> None:
    print("| size | policy | GPUs | head imbalance (index order) | MB sent per GPU a chunk | DiT ms a chunk | DiT speed-up "
          "(index order) | e2e ms a chunk (VAE on rank 0) | e2e speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, tokens in SIZES.items():
        for policy in ("self-forcing", "headforcing"):
            one = chunk_ms(policy, 1, tokens)[0]
            for ranks in (1, 2, 3, 4, 6):
                dit, lost, sent = chunk_ms(policy, ranks, tokens)
                dit_index, lost_index, _ = chunk_ms(policy, ranks, tokens, balanced=False)
                print(f"| {size} | {policy} | {ranks} | {lost:.1%} ({lost_index:.1%}) | {sent:.0f} | {dit:.0f} | {one / dit:.2f}x "
                      f"({one / dit_index:.2f}x) | "
                      f"{dit + VAE_MS:.0f} | {(one + VAE_MS) / (dit + VAE_MS):.2f}x |")


if __name__ == "__main__":
    main()
