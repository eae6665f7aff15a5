"""The ``mfscratch`` command. It parses, validates, calls the library, and maps errors to exit codes.

Exit codes: 0 success, 2 bad input or settings (one-line ``error: ...`` on stderr; ``--debug``
shows the traceback), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import MfscratchError
from ..notices import compile_notice
from .args import Parser
from .bench import add_bench_parser
from .cv import add_cv_parser
from .train import add_train_parser
from .usage import add_usage_commands

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="mfscratch", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mfscratch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_usage_commands(sub)
    add_cv_parser(sub)
    add_bench_parser(sub)
    return parser


class _OneLineWarnings:
    """``warnings.showwarning`` for a run: each warning as one stderr line, the first time it is issued
    (``note:`` for a fallback the user asked for, an unknown user or item; ``warning:`` otherwise)."""

    def __init__(self):
        self.seen: set[tuple[type, str]] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        from ..analysis import FallbackWarning

        if (category, str(message)) in self.seen:
            return
        self.seen.add((category, str(message)))
        kind = "note" if issubclass(category, FallbackWarning) else "warning"
        print(f"{kind}: {message}", file=sys.stderr)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad arguments (2) or --help (0): return the code instead of raising
        return e.code if isinstance(e.code, int) else 2
    try:
        with warnings.catch_warnings():
            from ..analysis import FallbackWarning
            from ..validate import DataWarning

            if getattr(args, "quiet", False):  # --quiet: errors only
                warnings.simplefilter("ignore")
            else:  # each of mfscratch's warnings reaches the printer, which shows it once
                warnings.simplefilter("always", FallbackWarning)
                warnings.simplefilter("always", DataWarning)
            if not args.debug:
                warnings.showwarning = _OneLineWarnings()
            quiet = getattr(args, "quiet", False)
            with compile_notice(None if quiet else lambda line: print(f"note: {line}", file=sys.stderr)):
                return args.func(args)
    except MfscratchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (
            f" (resume from the last finished epoch with --checkpoint {args.checkpoint} --resume)"
            if getattr(args, "checkpoint", None)
            else ""
        )
        print(f"error: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
