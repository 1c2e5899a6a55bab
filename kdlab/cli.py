"""Shared command-line plumbing: KdlabError -> one line on stderr and exit code 2 (--debug: traceback)."""

from __future__ import annotations

import sys
from typing import Callable

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
    sys.exit(code or 0)
