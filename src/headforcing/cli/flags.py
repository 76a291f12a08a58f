"""What several commands share: the parser that answers in one line, the model flags and their conversion to
load arguments and a request's fields, durations."""

from __future__ import annotations

import argparse
import sys

from ..engine.compiled import MODES as COMPILE_MODES
from ..errors import UsageError

MODELS = "toy (the shipped toy-world model), tiny (random, for tests), wan2.1-1.3b (the real shape)"


class HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it has one and its help does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):  # one line, exit code 2 (argparse prints the usage too)
        print(f"headforcing: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def add_model_args(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed, 0..2**63-1")
    p.add_argument("--model", default="toy", help=MODELS)
    p.add_argument("--toy-weights", help="a toy-world checkpoint from `toyworld train`, or 'memory' (the packaged fine-tune "
                   "that copies unsaid colours from its context; docs/TOYWORLD.md) (default: the shipped one)")
    p.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT, multiples of 16 for Wan models, of 4 for the toy "
                   "model (default: the model's, 832x480 / 32x32; or the --init-video clip's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", help="float32 or bfloat16 (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--context-noise", type=int, help="timestep the commit pass gives each finished chunk "
                   "(Self-Forcing's context_noise; default: the model's own, 50 for toy, 0 otherwise)")
    p.add_argument("--wan-dir", help="Wan2.1-T2V-1.3B folder, diffusers or original layout (env HEADFORCING_WAN_DIR)")
    p.add_argument("--checkpoint", help="causal DiT checkpoint: self_forcing_dmd.pt, ... (env HEADFORCING_CHECKPOINT)")
    p.add_argument("--lora", help="LoRA checkpoint merged into the DiT at load (LongLive)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank, i.e. scale 1)")
    p.add_argument("--no-ema", action="store_true", help="use `generator` rather than `generator_ema`")
    p.add_argument("--text-encoder-device", help="where umT5 runs (default: the run's device; offloaded after)")


def add_threads_arg(p) -> None:
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default: what the model's shape was measured to "
                   "use, 1 for the toy and tiny models; OMP_NUM_THREADS wins too)")


def add_parallel_arg(p) -> None:
    p.add_argument("--parallel", choices=("heads",), help="heads: one stream over the ranks of a torchrun launch, each "
                   "rank attending for its share of the heads and keeping only their caches (docs/SCALING.md)")


def add_compile_arg(p) -> None:
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                   help="compile the DiT for chunks after the cache fills (torch.compile, fullgraph); MODE: "
                   f"{', '.join(COMPILE_MODES)} (reduce-overhead: CUDA graphs); default without MODE: default")


def load_args(args) -> dict:
    """The flags that say which model to load and where (headforcing.load's arguments, but the model name)."""
    return dict(device=args.device, dtype=args.dtype, wan_dir=args.wan_dir, checkpoint=args.checkpoint, lora=args.lora,
                lora_alpha=args.lora_alpha, ema=not args.no_ema, text_encoder_device=args.text_encoder_device,
                toy_weights=args.toy_weights)


def model_request_args(args) -> dict:
    """The model flags as a generate Request's fields: where to load it from, and what fixes its draws and shape."""
    return dict(seed=args.seed, model=args.model, size=args.size, **load_args(args), context_noise=args.context_noise)


def parse_durations(text: str) -> list[float]:
    try:
        durations = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--seconds must be comma-separated numbers, got {text!r}") from None
    if not all(0 < d <= 86400 for d in durations):  # (nan fails too)
        raise UsageError(f"--seconds must be positive and at most a day (86400), got {text!r}")
    return durations
