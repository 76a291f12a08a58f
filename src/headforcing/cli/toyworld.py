"""`headforcing toyworld train | eval`: the toy world's model trained, and its suites (drift, memory, recall)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .flags import Parser, add_threads_arg, parse_durations


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
    from ..cache.policy import PRESETS, known
    from ..toyworld.eval import evaluate

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
    from ..engine.pipeline import load

    return load("toy", toy_weights=args.toy_weights)


def run_toy_train(args) -> int:
    from ..models.toy import checkpoint_info
    from ..toyworld.train import train

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
    from ..toyworld.eval import evaluate_memory

    if args.change_at is not None:
        raise UsageError("--change-at belongs to the default suite; the memory suite scripts its own scenes")
    sampling = dict(solver=args.solver, context_noise=args.context_noise, blend_chunks=args.blend_chunks)
    if args.novelty is not None:
        from ..cache.episodic import EpisodicConfig

        sampling["episodic"] = EpisodicConfig(novelty=args.novelty)
    report = evaluate_memory(toy_model(args), policies, parse_durations(args.seconds), args.seeds, args.out, args.heads, args.toy_weights,
                             sampling, args.first_seed)
    if report is None:  # a rank other than 0 under torchrun: rank 0 writes the merged report
        return 0
    print((Path(args.out) / "memory.md").read_text(), end="")
    print(f"wrote {args.out}/memory.json, memory.md, memory_frames_*.png ({len(report['results'])} rows)")
    return 0


def run_recall(args, policies: list[str]) -> int:
    from ..toyworld.recall import MODES, evaluate_recall

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
