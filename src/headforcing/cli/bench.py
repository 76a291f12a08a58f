"""`headforcing bench`: frames/s and memory per policy and duration on one loaded model."""

from __future__ import annotations


from ..errors import UsageError
from .flags import add_compile_arg, add_parallel_arg, add_threads_arg, parse_durations, parse_size


def bench_flags(sub) -> None:
    b = sub.add_parser("bench", help="time presets x durations: FPS, first frame, memory, TFLOP/s")
    add_threads_arg(b)
    b.add_argument("--policies", default="self-forcing,headforcing")
    b.add_argument("--seconds", default="10,60", help="durations, comma-separated")
    b.add_argument("--model", default=None, help="default: wan2.1-1.3b on a GPU, tiny on a CPU (smoke test)")
    b.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT (default: the model's)")
    b.add_argument("--warmup", type=int, default=2, help="chunks of warm-up before timing")
    b.add_argument("--device")
    b.add_argument("--dtype")
    b.add_argument("--out", help="folder for bench.json and bench.md")
    b.add_argument("--estimate", action="store_true", help="print the memory a run needs (weights, text encoder, cache per "
                   "preset, activations), computed from the model's spec at 832x480 and 1280x720 (or --size); nothing runs")
    add_compile_arg(b)
    add_parallel_arg(b)
    b.add_argument("--gpu-report", metavar="DIR", help="the whole GPU measurement in one go: eager / compiled / CUDA graphs x "
                   "self-forcing, headforcing x 10 s, 60 s at 832x480 (random weights): DIR/bench.json, DIR/BENCHMARKS.md")


def run_bench(args) -> int:
    import torch

    from ..cache.policy import preset
    from ..engine.pipeline import load
    from ..tools.bench import bench, table

    durations = parse_durations(args.seconds)
    if args.estimate:
        from ..models.specs import get_spec
        from ..tools.estimate import estimate, table as memory_table

        sizes = [args.size] if args.size else [(832, 480), (1280, 720)]
        dtype = getattr(torch, args.dtype or "bfloat16", None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise UsageError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
        print(memory_table(estimate(get_spec(args.model or "wan2.1-1.3b"), sizes, dtype)), end="")
        return 0
    if args.gpu_report:
        from ..tools.bench import gpu_report

        if args.model is None and not torch.cuda.is_available():
            raise UsageError("--gpu-report measures the real shape on a GPU, and this machine has none "
                             "(--model tiny runs it as a smoke test)")
        pipe = load(args.model or "wan2.1-1.3b", device=args.device, dtype=args.dtype)
        gpu_report(pipe, args.gpu_report, durations, args.policies.split(","), args.size)
        print(f"wrote {args.gpu_report}/gpu.json and gpu.md")
        return 0
    model = args.model or ("wan2.1-1.3b" if torch.cuda.is_available() else "tiny")
    policies = args.policies.split(",")
    for policy in policies:
        preset(policy)  # an unknown name fails before the model loads
    pipe = load(model, device=args.device, dtype=args.dtype, parallel=args.parallel)
    if args.compile:
        pipe.compile(args.compile)
    rows = bench(pipe, policies, durations, args.out, args.warmup, size=args.size)
    if rows is not None:  # (None: a rank computing for rank 0, which prints)
        print(table(rows))
    return 0
