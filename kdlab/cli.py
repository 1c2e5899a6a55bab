"""Shared command-line plumbing: KdlabError -> one line on stderr and exit code 2 (--debug: traceback)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from kdlab.errors import KdlabError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None, prog: str = "kdlab") -> None:
    """Run main(argv); a KdlabError becomes `prog: error: <message>` and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        code = main(argv)
    except KdlabError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"{prog}: {exc or 'interrupted'}; resume with --resume", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        code = 0
    sys.exit(code or 0)


def hoist_flags(argv: list[str], value_flags: set[str], bool_flags: set[str]) -> list[str]:
    """Move known --flags (anywhere, even after KEY VALUE overrides) in front of the overrides.

    argparse's REMAINDER would otherwise swallow `--resume` written at the end of a command line.
    A token is an override value (not a flag) when it directly follows an override key.
    """
    flags, rest, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        name = tok.split("=", 1)[0]
        if name in value_flags:
            take = 1 if "=" in tok else 2
            flags += argv[i : i + take]
            i += take
        elif name in bool_flags:
            flags.append(tok)
            i += 1
        else:  # an override KEY VALUE pair (or a stray token argparse will report)
            rest += argv[i : i + 2]
            i += 2
    return flags + rest
