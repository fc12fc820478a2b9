"""One-line user errors and the CLI wrapper: the torch-free bottom of common/ (tools that never touch a tensor,
such as tools/coco_eval.py and tools/summarize.py, start without importing torch). common.io re-exports both."""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A mistake in what the user gave us; tools print it as one line and exit non-zero."""


class Stopped(Exception):
    """A run that stopped on a signal (SIGTERM, SIGINT) after saving where it was: tools print the message (how to
    continue) as one line and exit with 128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        return type(self), (str(self), self.signum)


DEBUG_FLAG, DEBUG_ENV = "--debug", "VANILLAKD_DEBUG"

# Readers of an unexpected exception that may recognise a user's problem in it (common.diskfull registers the full
# disk when imported): a registry, so this torch-free bottom of common/ imports none of them.
_TRANSLATORS: list[Callable[[BaseException], object | None]] = []


def register_translator(fn: Callable[[BaseException], object | None]) -> Callable[[BaseException], object | None]:
    """Add ``fn(exception) -> one line or None`` to what ``cli_main`` tries before showing a traceback."""
    _TRANSLATORS.append(fn)
    return fn


def translate(e: BaseException) -> str | None:
    for fn in _TRANSLATORS:
        found = fn(e)
        if found is not None:
            return str(found)
    return None


def _named_by_user(path: object, argv: list[str]) -> bool:
    """Whether a missing path is one the user gave on the command line (alone or as a flag's value)."""
    if not path:
        return False
    path = str(path)
    given = [v for a in argv for v in (a, a.split("=", 1)[-1])]  # --flag=value too
    return any(path == v or (len(v) > 1 and path.startswith(v.rstrip("/") + "/")) for v in given)


def cli_main(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for tool entry points. The user's mistakes (a UserError, a path the user named that does not
    exist) and a full disk become one line and exit code 2; a run stopped by a signal (``Stopped``) says how to
    continue and exits 128 + the signal; anything else is a bug of ours and keeps its traceback. With
    ``--debug`` (any tool; removed before the tool parses its arguments) or VANILLAKD_DEBUG=1, every error shows
    its traceback."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None, *args: Any, **kwargs: Any) -> Any:
        from common.environment import apply_thread_env
        apply_thread_env()  # a job runner's thread count (tools/study.py --threads) also reaches torch
        given = list(sys.argv[1:] if argv is None else argv)
        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or DEBUG_FLAG in given
        if DEBUG_FLAG in given:
            given = [a for a in given if a != DEBUG_FLAG]
            argv = given
        try:
            return fn(argv, *args, **kwargs)
        except UserError as e:
            if debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except FileNotFoundError as e:
            if debug or not _named_by_user(e.filename, given):
                raise
            print(f"error: no such file or directory: {e.filename}", file=sys.stderr)
            sys.exit(2)
        except Stopped as e:
            if str(e):  # the other ranks of a job stop quietly: rank 0 says it once
                print(str(e), file=sys.stderr)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001  a full disk met outside our writers (a log, TensorBoard's events)
            line = None if debug else translate(e)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

    return wrapper
