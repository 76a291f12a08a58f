"""`headforcing conformance`: replay the golden recordings of the reference pipeline."""

from __future__ import annotations




def conformance_flags(sub) -> None:
    conf = sub.add_parser("conformance", help="replay a Self-Forcing recording and compare its latents")
    conf.add_argument("recording")
    conf.add_argument("--tolerance", type=float, default=1e-4)


def run_conformance(args) -> int:
    from ..tools.conformance import max_abs_error

    error = max_abs_error(args.recording)
    ok = error <= args.tolerance
    print(f"max abs error {error:.3g} ({'within' if ok else 'beyond'} tolerance {args.tolerance:g})")
    return 0 if ok else 1
