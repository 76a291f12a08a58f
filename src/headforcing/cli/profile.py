"""`headforcing profile`: each head's role, measured on the model."""

from __future__ import annotations


from ..cache.policy import DEFAULT_RULE
from .flags import add_model_args, add_threads_arg, load_args


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
    from ..tools.profile import profile

    out = profile(args, load_args(args), dict(seed=args.seed, size=args.size, context_noise=args.context_noise))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
