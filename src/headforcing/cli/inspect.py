"""`headforcing inspect PATH`: what a checkpoint file or Wan folder is, and whether it loads."""

from __future__ import annotations




def inspect_flags(sub) -> None:
    ins = sub.add_parser("inspect", help="say what a checkpoint file or Wan folder is and whether it loads")
    ins.add_argument("path")


def run_inspect(args) -> int:
    from ..tools.inspect import inspect_path

    report = inspect_path(args.path)
    print("\n".join(report.lines))
    return 0 if report.loadable else 1
