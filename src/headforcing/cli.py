"""headforcing generate | conformance | inspect"""

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
    gen.add_argument("--wan-dir", help="Wan2.1-T2V-1.3B folder, diffusers or original layout (env HEADFORCING_WAN_DIR)")
    gen.add_argument("--checkpoint", help="causal DiT checkpoint: self_forcing_dmd.pt, ... (env HEADFORCING_CHECKPOINT)")
    gen.add_argument("--lora", help="LoRA checkpoint merged into the DiT at load (LongLive)")
    gen.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    gen.add_argument("--no-ema", action="store_true", help="use `generator` rather than `generator_ema`")
    gen.add_argument("--text-encoder-device", help="where umT5 runs (default: the run's device; offloaded after)")

    ins = sub.add_parser("inspect", help="say what a checkpoint file or Wan folder is and whether it loads")
    ins.add_argument("path")

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
        wan_dir=args.wan_dir,
        checkpoint=args.checkpoint,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        ema=not args.no_ema,
        text_encoder_device=args.text_encoder_device,
    )
    if not request.prompt.strip():
        raise UsageError("--prompt is empty")
    summary = generate(request, progress=not args.quiet)
    if summary.model == "tiny":
        print("note: the tiny model has random weights, so its video is noise; real weights give real videos.")
    print(summary.line())
    return 0


def run_conformance(args) -> int:
    from .conformance import max_abs_error

    error = max_abs_error(args.recording)
    ok = error <= args.tolerance
    print(f"max abs error {error:.3g} ({'within' if ok else 'beyond'} tolerance {args.tolerance:g})")
    return 0 if ok else 1


def run_inspect(args) -> int:
    from .inspect import inspect_path

    report = inspect_path(args.path)
    print("\n".join(report.lines))
    return 0 if report.loadable else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": run_generate, "conformance": run_conformance, "inspect": run_inspect}
    try:
        return commands[args.command](args)
    except UsageError as e:
        print(f"headforcing: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
