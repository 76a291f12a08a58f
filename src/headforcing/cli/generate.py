"""`headforcing generate`: one video from a prompt or a timeline (or --resume an interrupted one), or a prompt set."""

from __future__ import annotations

from pathlib import Path

from ..cache.policy import DEFAULT_RULE, PRESETS
from ..errors import UsageError
from .flags import add_compile_arg, add_model_args, add_parallel_arg, add_threads_arg, model_request_args


def prompt_timeline(args):
    from ..engine.timeline import parse_prompt_arg, read_timeline

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
    from ..runs.generate import Request, run, run_resumed

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
    from ..runs.prompt_sets import run_prompt_set as run_set
    from ..runs.generate import Request

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
        from ..evaluation.report import evaluate

        out_dir = str(Path(args.out).with_suffix(".eval"))
        report = evaluate([args.out], out_dir)["videos"][Path(args.out).name]
        print(f"eval: temporal flickering {report['temporal_flickering']:.4f}, "
              f"dynamic degree (proxy) {report['dynamic_degree_proxy']:.0f}, "
              f"motion smoothness (proxy) {report['motion_smoothness_proxy']:.4f} -> {out_dir}/")
    return 0
