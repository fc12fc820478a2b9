"""Running out of space while writing, as one line: which file, how much space is left, what is still intact and how
to go on.

Why one place: a full disk reaches us in several shapes (``OSError`` errno 28 from Python's writes, a
``RuntimeError`` from torch.save's zip writer, ``SafetensorError(... os error 28)`` from safetensors, EDQUOT on a
quota, EFBIG past a file-size limit) and from every writer (checkpoints, hub folders, mmengine's checkpoints through
the atomic backend, ONNX files, reports). Torch-free, like common/errors.py.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError, register_translator

_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large (a file size limit)"}
_TEXTS = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT,
          "os error 122": errno.EDQUOT, "file too large": errno.EFBIG, "os error 27": errno.EFBIG}
# torch.save to a path writes through its own C++ zip writer, whose errors carry no errno
_WRITER_TEXTS = ("file write failed", "pytorchstreamwriter", "inline_container")
LOW_SPACE = 1 << 20  # with less than this free, a writer's errno-less failure is taken for a full disk


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes (for an unprivileged user) on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    for q in (p, *p.parents):
        if q.exists():
            try:
                return shutil.disk_usage(q).free
            except OSError:
                return None
    return None


def human(n: int | None) -> str:
    if n is None:
        return "unknown space"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def out_of_space(e: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """Why ``e`` means there was no room to write (a phrase), or None when it is some other error. The errors it was
    raised from count too (torch.save on a file: the write's OSError, then the zip writer's RuntimeError on top)."""
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _REASONS:
            return _REASONS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(e).lower()
    for key, code in _TEXTS.items():
        if key in text:
            return _REASONS[code]
    if isinstance(e, RuntimeError) and any(k in text for k in _WRITER_TEXTS) and path is not None:
        free = free_bytes(path)
        if free is not None and free < LOW_SPACE:
            return _REASONS[errno.ENOSPC]
    return None


class DiskFull(UserError):
    """No room to write ``path``: one line with the free space, whether the writer left nothing behind (``clean``),
    what is intact (``intact``) and how to go on (``hint``). Callers that know more (the run's last checkpoint, the
    command that continues) add it with :meth:`explain`."""

    def __init__(self, path: str | os.PathLike, reason: str, intact: str = "", hint: str = "", clean: bool = False,
                 free: int | None = None):
        self.path, self.reason, self.intact, self.hint, self.clean = Path(path), reason, intact, hint, clean
        self.free = free_bytes(path) if free is None else free  # measured before the writer's clean-up freed any
        super().__init__(self._line())

    def _line(self) -> str:
        where = self.path.parent if str(self.path.parent) not in ("", ".") else Path(".")
        parts = [f"{self.reason} while writing {self.path} ({human(self.free)} free in {where})"]
        if self.clean:
            parts.append("no partial file was left")
        parts += [p for p in (self.intact, self.hint) if p]
        return "; ".join(parts)

    def explain(self, intact: str | None = None, hint: str | None = None) -> "DiskFull":
        """The same error with what the caller knows: what is intact, how to continue."""
        if intact is not None:
            self.intact = intact
        if hint is not None:
            self.hint = hint
        self.args = (self._line(),)
        return self

    def __reduce__(self):  # picklable (submitit sends a task's exception back)
        return type(self), (self.path, self.reason, self.intact, self.hint, self.clean, self.free)


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn running out of space inside the block into :class:`DiskFull` naming ``path``. The writer removes what it
    left (a temporary file or folder) after the block, so that the space is measured as it was when the write
    failed; this says whether the previous ``path`` (``what``: "checkpoint", "folder" ...) is still there."""
    existed = Path(path).exists()
    try:
        yield
    except UserError:  # DiskFull from an inner writer, or a mistake that says its own line
        raise
    except Exception as e:  # noqa: BLE001  (OSError, torch's RuntimeError, SafetensorError, onnx's errors)
        reason = out_of_space(e, path)
        if reason is None:
            raise
        raise DiskFull(path, reason, f"the previous {what or 'file'} is intact" if existed else "", clean=True) \
            from None


def as_disk_full(e: BaseException, fallback_path: str | os.PathLike | None = None) -> DiskFull | None:
    """An out-of-space error raised anywhere (not through :func:`writing`) as :class:`DiskFull`, else None."""
    if isinstance(e, DiskFull):
        return e
    path = getattr(e, "filename", None) or fallback_path
    reason = out_of_space(e, path)
    if reason is None:
        return None
    return DiskFull(path or "a file", reason)


register_translator(as_disk_full)  # cli_main's last resort: a full disk met outside our writers
