"""headforcing generate | conformance"""

from __future__ import annotations

import argparse
import sys

from .cache.policy import PRESETS
from .errors import UsageError
from .models import SPECS


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints the usage too)
        print(f"headforcing: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def build_parser() -> Parser:
    parser = Parser(prog="headforcing", description="Long AR video generation with a head-wise KV cache.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    gen = sub.add_parser("generate", help="generate a video chunk by chunk")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--seconds", type=float, default=5.0)
    gen.add_argument("--policy", default="headforcing", help=f"one of: {', '.join(PRESETS)}")
    gen.add_argument("--out", help="output .mp4 (omit with --latents-only)")
    gen.add_argument("--latents-only", action="store_true", help="run the DiT only; decode and write nothing")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--model", default="tiny", choices=sorted(SPECS))
    gen.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT, multiples of 16 (default: the model's)")
    gen.add_argument("--heads", help="HeadMap JSON for multi-role policies (default: a fixed split rule)")
    gen.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    gen.add_argument("--dtype", help="float32 or bfloat16 (default: bfloat16 on GPU, float32 on CPU)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    conf = sub.add_parser("conformance", help="replay a Self-Forcing recording and compare its latents")
    conf.add_argument("recording")
    conf.add_argument("--tolerance", type=float, default=1e-4)
    return parser


def run_generate(args) -> int:
    from .pipeline import Request, generate

    if args.out is None and not args.latents_only:
        raise UsageError("give --out FILE.mp4, or --latents-only")
    request = Request(
        prompt=args.prompt,
        seconds=args.seconds,
        policy=args.policy,
        model=args.model,
        out=None if args.latents_only else args.out,
        seed=args.seed,
        size=args.size,
        heads=args.heads,
        device=args.device,
        dtype=args.dtype,
    )
    if not request.prompt.strip():
        raise UsageError("--prompt is empty")
    summary = generate(request, progress=not args.quiet)
    if args.model == "tiny":
        print("note: the tiny model has random weights, so its video is noise; real weights give real videos.")
    print(summary.line())
    return 0


def run_conformance(args) -> int:
    from .conformance import max_abs_error

    error = max_abs_error(args.recording)
    ok = error <= args.tolerance
    print(f"max abs error {error:.3g} ({'within' if ok else 'beyond'} tolerance {args.tolerance:g})")
    return 0 if ok else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"generate": run_generate, "conformance": run_conformance}[args.command](args)
    except UsageError as e:
        print(f"headforcing: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
