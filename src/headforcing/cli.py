"""headforcing generate | profile | eval | bench | toyworld train|eval | conformance | inspect

Only light modules are imported here: `--help` and bad flags answer at once; torch loads when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .utils import signals
from .cache.policy import DEFAULT_RULE, PRESETS
from .engine.compiled import MODES as COMPILE_MODES
from .errors import RunError, UsageError
from .utils.ranks import world

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


def build_parser() -> Parser:
    parser = Parser(prog="headforcing", description="Long AR video generation with a head-wise KV cache.")
    parser.add_argument("--version", action="version", version=f"headforcing {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for flags in (generate_flags, profile_flags, eval_flags, bench_flags, inspect_flags, toyworld_flags, serve_flags, conformance_flags):
        flags(sub)
    return parser


def load_args(args) -> dict:
    """The flags that say which model to load and where (headforcing.load's arguments, but the model name)."""
    return dict(device=args.device, dtype=args.dtype, wan_dir=args.wan_dir, checkpoint=args.checkpoint, lora=args.lora,
                lora_alpha=args.lora_alpha, ema=not args.no_ema, text_encoder_device=args.text_encoder_device,
                toy_weights=args.toy_weights)


def model_request_args(args) -> dict:
    """The model flags as a generate Request's fields: where to load it from, and what fixes its draws and shape."""
    return dict(seed=args.seed, model=args.model, size=args.size, **load_args(args), context_noise=args.context_noise)


def prompt_timeline(args):
    from .engine.timeline import parse_prompt_arg, read_timeline

    if args.timeline and args.prompt:
        raise UsageError("give --prompt or --timeline, not both")
    if args.timeline:
        return read_timeline(args.timeline)
    if not args.prompt:
        raise UsageError("give --prompt TEXT (or --timeline FILE)")
    if len(args.prompt) == 1 and "@" not in args.prompt[0]:
        return args.prompt[0]
    return [parse_prompt_arg(p) for p in args.prompt]


def generate_flags(sub) -> None:
    gen = sub.add_parser("generate", help="generate a video chunk by chunk")
    add_threads_arg(gen)
    gen.add_argument("--prompt", action="append", help='a prompt; repeat as "text@SECONDS" for a timeline')
    gen.add_argument("--timeline", help='JSONL file of {"start": seconds, "prompt": text}')
    gen.add_argument("--seconds", type=float, help="seconds of video to generate (default: 5)")
    gen.add_argument("--policy", help=f"one of: {', '.join(PRESETS)} (default: headforcing); or a variant for "
                     "ablations (docs/POLICIES.md)")
    gen.add_argument("--out", help="output .mp4 (omit with --latents-only)")
    gen.add_argument("--latents-only", action="store_true", help="run the DiT only; decode and write nothing")
    gen.add_argument("--heads", help="HeadMap JSON for multi-role policies, or 'auto' to profile the first window online")
    gen.add_argument("--rule", default=DEFAULT_RULE, help="head classification rule for --heads auto")
    gen.add_argument("--trace", help="write episodic-memory decisions to this JSONL file")
    gen.add_argument("--eval", action="store_true", help="run the no-model metrics on the video (into OUT.eval/)")
    gen.add_argument("--init-video", help="continue this clip (its frames are encoded and committed as context; "
                     "--seconds and prompt times then count from its end)")
    gen.add_argument("--init-image", help="start from this image (committed alone as the first latent frame)")
    gen.add_argument("--crf", type=int, help="H.264 quality, 0 (lossless) .. 51 (default: 18)")
    gen.add_argument("--prompts", help="a prompt set: text (a prompt a line) or JSONL ({\"prompt\"} or {\"timeline\"}, "
                     "optional \"id\", \"seed\"); one video per entry into --out-dir; shard it with torchrun")
    gen.add_argument("--out-dir", help="folder for a prompt set's videos and manifest.jsonl")
    gen.add_argument("--policies", help="with --prompts: comma-separated policies, each entry made under each "
                     "(DIR/<policy>/<id>.mp4)")
    gen.add_argument("--resume", help="a STEM.state.safetensors left by an interrupted run: finish that run into --out "
                     "(prompts, timeline, seconds, policy, heads, seed and model come from the state)")
    add_model_args(gen)
    add_compile_arg(gen)
    add_parallel_arg(gen)
    gen.set_defaults(seed=None, model=None)  # None: not given (so --resume can tell a contradicting flag)


def run_generate(args) -> int:
    from .runs.generate import Request, run, run_resumed

    if args.out is not None and args.latents_only:
        raise UsageError("--latents-only writes nothing; give --out or --latents-only, not both")
    if args.prompts or args.out_dir or args.policies:
        return run_prompt_set(args)
    if args.resume:
        given = dict(model_request_args(args), seconds=args.seconds, policy=args.policy, heads=args.heads,
                     init_video=args.init_video, init_image=args.init_image,
                     prompt=prompt_timeline(args) if args.prompt or args.timeline else None,
                     rule=None if args.rule == DEFAULT_RULE else args.rule, crf=args.crf, compile=args.compile,
                     trace=args.trace, parallel=args.parallel)
        return report_generate(args, run_resumed(args.resume, args.out, given, progress=not args.quiet))
    if args.out is None and not args.latents_only:
        raise UsageError("give --out FILE.mp4, or --latents-only")
    prompt = prompt_timeline(args)
    if isinstance(prompt, str) and not prompt.strip():
        raise UsageError("--prompt is empty")
    given_defaults(args)
    request = Request(
        prompt=prompt,
        seconds=5.0 if args.seconds is None else args.seconds,
        policy=args.policy or "headforcing",
        out=None if args.latents_only else args.out,
        heads=args.heads,
        rule=args.rule,
        trace=args.trace,
        init_video=args.init_video,
        init_image=args.init_image,
        crf=18 if args.crf is None else args.crf,
        compile=args.compile,
        parallel=args.parallel,
        **model_request_args(args),
    )
    return report_generate(args, run(request, progress=not args.quiet))


def given_defaults(args) -> None:
    """generate leaves --seed and --model unset (so --resume can tell them from given ones); a new run fills them."""
    args.seed = 0 if args.seed is None else args.seed
    args.model = args.model or "toy"


def run_prompt_set(args) -> int:
    from .runs.prompt_sets import run_prompt_set as run_set
    from .runs.generate import Request

    if not args.prompts or not args.out_dir:
        raise UsageError("a prompt set needs both --prompts FILE and --out-dir DIR")
    clashes = [flag for flag, value in (("--prompt", args.prompt), ("--timeline", args.timeline), ("--out", args.out),
               ("--resume", args.resume), ("--init-video", args.init_video), ("--init-image", args.init_image),
               ("--latents-only", args.latents_only), ("--trace", args.trace), ("--eval", args.eval),
               ("--parallel", args.parallel)) if value]
    if clashes:
        raise UsageError(f"{clashes[0]} does not go with --prompts (each entry of the file is one video into --out-dir)")
    if args.policy and args.policies:
        raise UsageError("give --policy or --policies, not both")
    policies = (args.policies or args.policy or "headforcing").split(",")
    given_defaults(args)
    template = Request(prompt="", seconds=5.0 if args.seconds is None else args.seconds, heads=args.heads, rule=args.rule,
                       crf=18 if args.crf is None else args.crf, compile=args.compile, **model_request_args(args))
    counts = run_set(template, args.prompts, args.out_dir, policies, progress=not args.quiet)
    print(f"rank {counts['rank']} of {counts['world']}: {counts['made']} made, {counts['skipped']} already done, "
          f"{counts['failed']} failed -> {counts['manifest']}")
    return 0


def report_generate(args, summary) -> int:
    if not summary.leads:  # a rank computing for the leading one (--parallel heads), which reports
        return 0
    if summary.model == "tiny":
        print("note: the tiny model has random weights, so its video is noise; real weights give real videos.")
    if summary.model == "toy":
        print("note: this is the toy-world model (coloured shapes, 32x32, 4 fps); real weights give real videos "
              "(--wan-dir and --checkpoint).")
    if len(summary.timeline) > 1:
        print("timeline: " + "; ".join(f"{c['start_seconds']:.2f} s (chunk {c['chunk']}): {c['prompt']}" for c in summary.timeline))
    print(summary.line())
    if args.eval and args.out and not args.latents_only:
        from .evaluation.report import evaluate

        out_dir = str(Path(args.out).with_suffix(".eval"))
        report = evaluate([args.out], out_dir)["videos"][Path(args.out).name]
        print(f"eval: temporal flickering {report['temporal_flickering']:.4f}, "
              f"dynamic degree (proxy) {report['dynamic_degree_proxy']:.0f}, "
              f"motion smoothness (proxy) {report['motion_smoothness_proxy']:.4f} -> {out_dir}/")
    return 0


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
    from .evaluation.report import evaluate, parse_seconds

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


def profile_flags(sub) -> None:
    prof = sub.add_parser("profile", help="measure what each head attends to and classify heads into roles")
    add_threads_arg(prof)
    prof.add_argument("--out", required=True, help="heads.json (the HeadMap with its statistics); a .png beside it")
    prof.add_argument("--prompts", help="a file of prompts, one per line (default: a few built-in ones)")
    prof.add_argument("--chunks", type=int, default=7, help="chunks to run, inside the trained window (default 7)")
    prof.add_argument("--queries", type=int, default=256, help="query tokens sampled per chunk")
    prof.add_argument("--rule", default=DEFAULT_RULE, help=f"classification rule (default {DEFAULT_RULE.replace('%', '%%')})")
    prof.add_argument("--from", dest="source", help="re-derive a HeadMap from saved statistics, without running")
    prof.add_argument("--install", action="store_true", help="also keep the profile as these weights' default roles "
                      "(typed policies run without --heads use it; see docs/POLICIES.md)")
    add_model_args(prof)


def run_profile(args) -> int:
    from .tools.profile import profile

    out = profile(args, load_args(args), dict(seed=args.seed, size=args.size, context_noise=args.context_noise))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


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

    from .cache.policy import preset
    from .engine.pipeline import load
    from .tools.bench import bench, table

    durations = parse_durations(args.seconds)
    if args.estimate:
        from .models.specs import get_spec
        from .tools.estimate import estimate, table as memory_table

        sizes = [args.size] if args.size else [(832, 480), (1280, 720)]
        dtype = getattr(torch, args.dtype or "bfloat16", None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise UsageError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
        print(memory_table(estimate(get_spec(args.model or "wan2.1-1.3b"), sizes, dtype)), end="")
        return 0
    if args.gpu_report:
        from .tools.bench import gpu_report

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


def parse_durations(text: str) -> list[float]:
    try:
        durations = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--seconds must be comma-separated numbers, got {text!r}") from None
    if not all(0 < d <= 86400 for d in durations):  # (nan fails too)
        raise UsageError(f"--seconds must be positive and at most a day (86400), got {text!r}")
    return durations


def toyworld_flags(sub) -> None:
    toy = sub.add_parser("toyworld", help="the toy world: train its model, or measure long-horizon drift against its truth")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, parser_class=Parser)
    tr = toy_sub.add_parser("train", help="train the toy-world model (seeded; checkpoints every --save-every steps)")
    add_threads_arg(tr)
    tr.add_argument("--out", required=True, help="folder for stepNNNNNN.safetensors (+ .json) checkpoints")
    tr.add_argument("--steps", type=int, default=3000)
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save-every", type=int, default=250)
    tr.add_argument("--device", default="cpu", help="cpu or cuda (a lent GPU trains a larger budget in minutes)")
    tr.add_argument("--resume", help="a checkpoint of `toyworld train`: go on from its step to --steps")
    tr.add_argument("--cooldown", type=int, default=0, help="let the learning rate fall linearly to 0 over the last N steps")
    tr.add_argument("--memory-share", type=float, default=0.0, help="share of clips that are memory cases (unsaid colours, "
                    "objects leaving and returning inside the window), 0..1")
    tr.add_argument("--trainable", choices=("all", "text"), default="all",
                    help="what training changes: every weight, or only what reads the caption (word encoder, text projection, cross-attention)")
    tr.add_argument("--context-timestep", type=float, default=0.0,
                    help="the timestep clean context chunks are given (default 0; the toy model's sampler commits at 50)")
    tr.add_argument("--context-jitter", type=float, default=0.0,
                    help="context pixels get noise of a level drawn per clip from 0..this (default 0: exact context)")
    tr.add_argument("--own-context", type=float, default=0.0,
                    help="share of clips whose clean context is the model's own one-step drawing of it (default 0)")
    tr.add_argument("--ema-decay", type=float, default=0.999, help="decay of the weights' moving average that checkpoints "
                    "keep (default 0.999; lower follows a short fine-tune sooner)")
    tr.add_argument("--return-share", type=float, default=0.5,
                    help="of the memory clips, the share where an object leaves and comes back (default 0.5)")
    te = toy_sub.add_parser("eval", help="generate far past the window per policy; decode the world state; compare with the captions")
    add_threads_arg(te)
    te.add_argument("--out", required=True, help="folder for toyworld.json, toyworld.md, curves and frames")
    te.add_argument("--policies", default="self-forcing,longlive,infinity-rope,headforcing",
                    help="cache presets; 'truth' measures the world's own frames (the benchmark's ceiling)")
    te.add_argument("--seconds", default="60,300", help="durations, comma-separated")
    te.add_argument("--seeds", type=int, default=8)
    te.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+SEEDS-1 (default 0)")
    te.add_argument("--heads", help="HeadMap JSON for headforcing and headforcing-coarse (from `headforcing profile --model toy`)")
    te.add_argument("--change-at", type=float, help="switch each seed's prompt to a changed scene at this second")
    te.add_argument("--toy-weights", help="a checkpoint from `toyworld train`, or 'memory' (the packaged fine-tune that copies "
                    "unsaid colours from its context) (default: the shipped one)")
    te.add_argument("--solver", choices=["euler", "renoise"], help="override the model's solver (to compare them)")
    te.add_argument("--context-noise", type=int, help="override the commit pass's timestep (the model's own: 50)")
    te.add_argument("--blend-chunks", type=int, default=0, help="blend the text conditioning over N chunks at the --change-at switch")
    te.add_argument("--suite", choices=["default", "memory", "recall"], default="default",
                    help="default: drift against the captions; memory: unsaid colours kept, objects that leave and return "
                    "(recall after 5, 15, 30, 60 s); recall: six objects that leave and return for 5-120 s, scored "
                    "teacher-forced and free-running, with the oracle and window reference caches")
    te.add_argument("--modes", default="teacher,free", help="recall suite: teacher, free or both (default)")
    te.add_argument("--novelty", type=float, help="the episodic memory's novelty threshold (default 0.05), to tune it")


def run_toyworld(args) -> int:
    if args.toy_command == "train":
        return run_toy_train(args)
    from .cache.policy import PRESETS, known
    from .toyworld.eval import evaluate

    policies = args.policies.split(",")
    references = ("truth", "oracle", "window") if args.suite == "recall" else ("truth",)
    unknown = [p for p in policies if not known(p) and p not in references]
    if unknown:
        raise UsageError(f"unknown policy {unknown[0]!r}; known: {', '.join(PRESETS + references)}")
    if args.suite == "recall":
        return run_recall(args, policies)
    if args.suite != "memory" and args.novelty is not None:
        raise UsageError("--novelty goes with --suite memory")
    if args.suite == "memory":
        return run_memory_suite(args, policies)
    report = evaluate(toy_model(args), policies, parse_durations(args.seconds), args.seeds, args.out, args.heads, args.toy_weights,
                      args.change_at, dict(solver=args.solver, context_noise=args.context_noise, blend_chunks=args.blend_chunks),
                      args.first_seed)
    if report is None:  # a rank other than 0 under torchrun: rank 0 writes the merged report
        return 0
    print((Path(args.out) / "toyworld.md").read_text(), end="")
    print(f"wrote {args.out}/toyworld.json, toyworld.md, curves_*.png/csv, frames_*.png ({len(report['results'])} runs)")
    return 0


def toy_model(args):
    """The toy model a toy-world suite runs on, loaded once (per torchrun rank)."""
    from .engine.pipeline import load

    return load("toy", toy_weights=args.toy_weights)


def run_toy_train(args) -> int:
    from .models.toy import checkpoint_info
    from .toyworld.train import train

    if args.steps < 1 or args.batch < 1:
        raise UsageError("--steps and --batch must be at least 1")
    if not 0 <= args.memory_share <= 1:
        raise UsageError(f"--memory-share must be 0..1, got {args.memory_share}")
    if not 0 <= args.context_timestep < 1000 or not 0 <= args.context_jitter <= 1:
        raise UsageError(f"--context-timestep must be 0..999 and --context-jitter 0..1, got {args.context_timestep} and {args.context_jitter}")
    if not 0 <= args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in 0..1 (1 excluded), got {args.ema_decay}")
    if not 0 <= args.own_context <= 1 or not 0 <= args.return_share <= 1:
        raise UsageError(f"--own-context and --return-share must be 0..1, got {args.own_context} and {args.return_share}")
    if not 0 <= args.cooldown <= args.steps:
        raise UsageError(f"--cooldown must be between 0 and --steps ({args.steps}), got {args.cooldown}")
    done = checkpoint_info(args.resume)["steps"] if args.resume else 0
    if args.steps <= done:
        raise UsageError(f"--steps {args.steps} is not past the {done} steps of --resume {args.resume}")
    last = train(args.out, args.steps, args.batch, args.seed, args.lr, ema_decay=args.ema_decay, save_every=args.save_every,
                 log=lambda m: print(m, flush=True), device=args.device, resume=args.resume,
                 cooldown=args.cooldown, memory_share=args.memory_share, trainable=args.trainable,
                 context_timestep=args.context_timestep, context_jitter=args.context_jitter,
                 own_context=args.own_context, return_share=args.return_share)
    print(f"wrote {last}; use it with --toy-weights {last}")
    return 0


def run_memory_suite(args, policies: list[str]) -> int:
    from .toyworld.eval import evaluate_memory

    if args.change_at is not None:
        raise UsageError("--change-at belongs to the default suite; the memory suite scripts its own scenes")
    sampling = dict(solver=args.solver, context_noise=args.context_noise, blend_chunks=args.blend_chunks)
    if args.novelty is not None:
        from .cache.episodic import EpisodicConfig

        sampling["episodic"] = EpisodicConfig(novelty=args.novelty)
    report = evaluate_memory(toy_model(args), policies, parse_durations(args.seconds), args.seeds, args.out, args.heads, args.toy_weights,
                             sampling, args.first_seed)
    if report is None:  # a rank other than 0 under torchrun: rank 0 writes the merged report
        return 0
    print((Path(args.out) / "memory.md").read_text(), end="")
    print(f"wrote {args.out}/memory.json, memory.md, memory_frames_*.png ({len(report['results'])} rows)")
    return 0


def run_recall(args, policies: list[str]) -> int:
    from .toyworld.recall import MODES, evaluate_recall

    modes = args.modes.split(",")
    if not modes or any(m not in MODES for m in modes):
        raise UsageError(f"--modes takes {' and/or '.join(MODES)}, comma-separated; got {args.modes!r}")
    if args.change_at is not None or args.novelty is not None:
        raise UsageError("--change-at and --novelty do not go with --suite recall")
    durations = parse_durations(args.seconds)
    if len(durations) != 1:
        raise UsageError(f"the recall suite takes one duration (--seconds 600), got {args.seconds!r}")
    sampling = dict(solver=args.solver, context_noise=args.context_noise)
    report = evaluate_recall(toy_model(args), policies, durations[0], args.seeds, args.out, modes, args.heads, args.toy_weights, sampling,
                             args.first_seed)
    if report is not None:
        print((Path(args.out) / "recall.md").read_text(), end="")
        print(f"wrote {args.out}/recall.json, recall.md, recall.png ({len(report['results'])} rows)")
    return 0


def listen(host: str, port: int):
    """The server's listening socket, bound before the model loads (a port in use is one line, at once)."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot serve on {host}:{port}: {e.strerror}") from None
    return sock


def served_hosts(bound: str, extra: list[str]) -> tuple[str, ...] | None:
    """The Host names the server answers to: loopback's names on loopback, the bound address otherwise; None
    (any) when bound to every interface, where the token is the guard."""
    from .server.app import LOOPBACK, host_name

    if bound in ("0.0.0.0", "::"):
        return None
    names = LOOPBACK if bound in LOOPBACK else (bound,)
    return tuple(names) + tuple(host_name(h) for h in extra)


def serve_flags(sub) -> None:
    srv = sub.add_parser("serve", help="a live page: the video plays as it is made, prompts change while it plays")
    add_threads_arg(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind; any other than this machine's loopback needs a token")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--token", help="required on the page URL and the WebSocket (generated and printed off localhost)")
    srv.add_argument("--max-sessions", type=int, default=2, help="live sessions at once (a page takes a slot when it "
                     "starts one); a page starting past them is told the server is busy and starts when a slot frees")
    srv.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                     help="end a session after this long without a control or a frame played in a visible page (default 600)")
    srv.add_argument("--buffer-seconds", type=float, metavar="SECONDS",
                     help="video the page may hold unplayed (default: measured, one chunk plus 1.5x what plays while one is made)")
    srv.add_argument("--blend-chunks", type=int, default=0, help="blend the text conditioning over N chunks at a prompt switch (0: hard)")
    srv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="a further name the Host header may give (e.g. a reverse proxy's); repeatable. By default only the "
                     "bound address (and localhost on loopback) is answered")
    srv.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                     help="a further origin (https://example.org) whose pages may open the live socket; repeatable. By "
                     "default only the server's own page may")
    add_model_args(srv)
    add_compile_arg(srv)
    add_parallel_arg(srv)


def run_serve(args) -> int:
    import secrets

    if not 1 <= args.max_sessions <= 64 or not 0 <= args.blend_chunks <= 64 or not 0 <= args.port <= 65535:
        raise UsageError("--max-sessions must be 1..64, --blend-chunks 0..64 and --port 0..65535")
    if not 1 <= args.idle_timeout <= 86400 or (args.buffer_seconds is not None and not 0 < args.buffer_seconds <= 60):
        raise UsageError("--idle-timeout must be 1..86400 seconds and --buffer-seconds in (0, 60]")
    local = args.host in ("127.0.0.1", "localhost", "::1")
    token = args.token or (None if local else secrets.token_urlsafe(16))
    bad = [o for o in args.allow_origin if not o.startswith(("http://", "https://"))]
    if bad:
        raise UsageError(f"--allow-origin takes an origin such as https://example.org, got {bad[0]!r}")
    hosts = served_hosts(args.host, args.allow_host)
    leads = not args.parallel or world()[0] == 0  # (serve --parallel heads: rank 0 serves, the others follow it)
    sock = listen(args.host, args.port) if leads else None  # before the model loads
    import uvicorn

    from .engine.pipeline import load
    from .server.app import create_app

    pipe = load(args.model, **load_args(args), parallel=args.parallel)
    if args.compile:
        pipe.compile(args.compile)
    if not leads:
        from .server.mirror import follow

        follow(pipe, args.blend_chunks)
        return 0
    app = create_app(pipe, args.max_sessions, token, args.blend_chunks, hosts, tuple(args.allow_origin),
                     args.idle_timeout, args.buffer_seconds)
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sock.getsockname()[1]  # the one it got, with --port 0
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # uvicorn takes Ctrl-C / SIGTERM over while it serves
    print(f"headforcing live: http://{host}:{port}/" + (f"?token={token}" if token else "") + "  (Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[sock])  # the socket already listens: connections made since the line above wait in its queue
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down cleanly and re-raised it (as uvicorn.run, we end there)
        pass
    return 0


def conformance_flags(sub) -> None:
    conf = sub.add_parser("conformance", help="replay a Self-Forcing recording and compare its latents")
    conf.add_argument("recording")
    conf.add_argument("--tolerance", type=float, default=1e-4)


def run_conformance(args) -> int:
    from .tools.conformance import max_abs_error

    error = max_abs_error(args.recording)
    ok = error <= args.tolerance
    print(f"max abs error {error:.3g} ({'within' if ok else 'beyond'} tolerance {args.tolerance:g})")
    return 0 if ok else 1


def inspect_flags(sub) -> None:
    ins = sub.add_parser("inspect", help="say what a checkpoint file or Wan folder is and whether it loads")
    ins.add_argument("path")


def run_inspect(args) -> int:
    from .tools.inspect import inspect_path

    report = inspect_path(args.path)
    print("\n".join(report.lines))
    return 0 if report.loadable else 1


def main(argv=None) -> int:
    try:
        signals.install()  # Ctrl-C / SIGTERM from here on: one line, exit 130 / 143, no traceback (hence inside the try)
        logging.getLogger("matplotlib").setLevel(logging.ERROR)  # its cache-folder note is not ours to print
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past a file-size limit, writes fail (EFBIG) instead of killing us
        args = build_parser().parse_args(argv)
        if getattr(args, "threads", None) is not None:
            if not 1 <= args.threads <= 1024:
                raise UsageError(f"--threads must be 1..1024, got {args.threads}")
            from .utils import threads  # (torch: not before a command needs it, so --help stays fast)

            threads.use(args.threads)
        commands = {
            "generate": run_generate,
            "profile": run_profile,
            "eval": run_eval,
            "bench": run_bench,
            "conformance": run_conformance,
            "inspect": run_inspect,
            "toyworld": run_toyworld,
            "serve": run_serve,
        }
        code = commands[args.command](args)
        signals.check()  # a signal kept from inside a finalizer still ends the run with its code
        return code
    except UsageError as e:
        print(f"headforcing: error: {e}", file=sys.stderr)
        return 2
    except signals.Interrupted as e:
        print(f"headforcing: {e.message}", file=sys.stderr)
        return e.code
    except RunError as e:
        print(f"headforcing: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
