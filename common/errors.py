"""One-line user errors and the CLI wrapper: the torch-free bottom of common/ (tools that never touch a tensor,
such as tools/coco_eval.py and tools/summarize.py, start without importing torch). common.io re-exports both."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """A mistake in what the user gave us; tools print it as one line and exit non-zero."""


def cli_main(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for tool entry points: a UserError (or a missing file) becomes one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from common.environment import apply_thread_env
        apply_thread_env()  # a job runner's thread count (tools/study.py --threads) also reaches torch
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except FileNotFoundError as e:
            print(f"error: no such file or directory: {e.filename or e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
