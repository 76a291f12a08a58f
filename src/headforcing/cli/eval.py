"""`headforcing eval`: long-video metrics over time for mp4 files."""

from __future__ import annotations

from pathlib import Path
from .flags import add_threads_arg



def eval_flags(sub) -> None:
    ev = sub.add_parser("eval", help="long-video metrics over time for one or more mp4 files")
    add_threads_arg(ev)
    ev.add_argument("videos", nargs="+", help="mp4 files, or folders of them (DIR/<policy>/<id>.mp4: one row per policy); "
                    "shard them with torchrun")
    ev.add_argument("--out", required=True, help="folder for metrics.json, segments.csv and plots")
    ev.add_argument("--segments", default="5s", help="segment length (default 5s)")
    ev.add_argument("--prompt-timeline", help="a .timeline.json or JSONL timeline, for per-prompt CLIP scores")
    ev.add_argument("--weights-dir", help="VBench-style folder of local weights for the learned metrics")
    ev.add_argument("--clip-seconds", type=float, default=2.0, help="clip length of the long-video rule")


def run_eval(args) -> int:
    from ..evaluation.report import evaluate, parse_seconds

    metrics = evaluate(args.videos, args.out, parse_seconds(args.segments), args.prompt_timeline, args.weights_dir, args.clip_seconds)
    if metrics is None:  # a rank other than 0 under torchrun: rank 0 writes the merged report
        return 0
    for name, r in metrics["videos"].items():
        print(f"{name}: {r['duration_s']:.2f} s, flicker {r['temporal_flickering']:.4f}, dynamic (proxy) "
              f"{r['dynamic_degree_proxy']:.0f}, smoothness (proxy) {r['motion_smoothness_proxy']:.4f}, "
              f"luma gap {r['gap']['luma']:+.4f}")
    for note in metrics["notes"]:
        print(f"note: {note}")
    for policy, row in metrics.get("policies", {}).items():
        print(f"policy {policy}: {row['videos']} videos, flicker {row['temporal_flickering']:.4f}, "
              f"smoothness (proxy) {row['motion_smoothness_proxy']:.4f}, luma gap {row['gap_luma']:+.4f}")
    print(f"wrote {Path(args.out) / 'metrics.json'}, segments.csv and {len(metrics['segment_metrics'])} plots")
    return 0
