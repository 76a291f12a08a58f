"""headforcing generate | profile | eval | bench | toyworld train|eval | serve | conformance | inspect

One module per command, each with its flags (`<command>_flags(sub)`) beside its run (`run_<command>(args)`); this
file lists them. Only light modules are imported here: `--help` and bad flags answer at once; torch loads when a
command runs.
"""

from __future__ import annotations

import logging
import signal
import sys

from .. import __version__
from ..utils import signals
from ..errors import RunError, UsageError
from .bench import bench_flags, run_bench
from .conformance import conformance_flags, run_conformance
from .eval import eval_flags, run_eval
from .flags import Parser
from .generate import generate_flags, run_generate
from .inspect import inspect_flags, run_inspect
from .profile import profile_flags, run_profile
from .serve import run_serve, serve_flags
from .toyworld import run_toyworld, toyworld_flags

COMMANDS = {  # name: (its flags, its run)
    "generate": (generate_flags, run_generate),
    "profile": (profile_flags, run_profile),
    "eval": (eval_flags, run_eval),
    "bench": (bench_flags, run_bench),
    "inspect": (inspect_flags, run_inspect),
    "toyworld": (toyworld_flags, run_toyworld),
    "serve": (serve_flags, run_serve),
    "conformance": (conformance_flags, run_conformance),
}


def build_parser() -> Parser:
    parser = Parser(prog="headforcing", description="Long AR video generation with a head-wise KV cache.")
    parser.add_argument("--version", action="version", version=f"headforcing {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for flags, _ in COMMANDS.values():
        flags(sub)
    return parser


def main(argv=None) -> int:
    try:
        signals.install()  # Ctrl-C / SIGTERM from here on: one line, exit 130 / 143, no traceback (hence inside the try)
        logging.getLogger("matplotlib").setLevel(logging.ERROR)  # its cache-folder note is not ours to print
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past a file-size limit, writes fail (EFBIG) instead of killing us
        args = build_parser().parse_args(argv)
        if getattr(args, "threads", None) is not None:
            if not 1 <= args.threads <= 1024:
                raise UsageError(f"--threads must be 1..1024, got {args.threads}")
            from ..utils import threads  # (torch: not before a command needs it, so --help stays fast)

            threads.use(args.threads)
        _, run = COMMANDS[args.command]
        code = run(args)
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

