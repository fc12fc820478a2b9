"""Checkpoint I/O shared by every tool: safe loading, atomic writing, unwrapping, one-line user errors.

Checkpoints are untrusted input: they are read with ``torch.load(weights_only=True)``, which refuses any
pickle that would construct arbitrary objects (and so run code). Reading a full pickle is an explicit
opt-in (``allow_pickle=True``, the tools' ``--unsafe-load`` flag), for files the user vouches for.
The one class allowed beyond tensors and plain data is ``argparse.Namespace`` (timm's CheckpointSaver stores
the training args so): rebuilding it only sets attributes, and what it holds passes the same checks.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from common.diskfull import DiskFull, writing  # noqa: F401  (DiskFull re-exported with UserError)
from common.errors import UserError, cli_main  # noqa: F401  (re-exported: every tool imports them from here)

_UMASK = os.umask(0o022)
os.umask(_UMASK)

# Keys under which other toolkits nest the model's weights, most specific first.
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "student", "module")


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False, map_location: str = "cpu") -> Any:
    """Load a checkpoint safely; raise UserError with a clear reason when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if allow_pickle:
            raise UserError(f"corrupt checkpoint {path}: {str(e).splitlines()[0]}") from None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise UserError(
                f"refusing to load {path}: it is a pickle that carries code or objects beyond tensors "
                f"({first.strip()[:160]}). Only if you trust its source, pass --unsafe-load."
            ) from None
        raise UserError(f"corrupt checkpoint {path}: {first[:200]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"corrupt or unreadable checkpoint {path}: {first[:200]}") from None


def unwrap_state_dict(obj: Any, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the model weights in a checkpoint of any common form and strip DDP/compile prefixes.

    Accepts plain state dicts, ``{'model': ...}``, ``{'state_dict': ...}``, timm's ``state_dict_ema``,
    and our own ``last.pth`` (``{'student': ...}``).
    """
    keys = _WRAPPER_KEYS if prefer_ema else tuple(k for k in _WRAPPER_KEYS if "ema" not in k)
    seen = 0
    while isinstance(obj, Mapping) and not _is_state_dict(obj) and seen < 4:
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
        else:
            break
        seen += 1
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise UserError("checkpoint holds no model state dict (looked for tensors and the keys "
                        f"{', '.join(_WRAPPER_KEYS)})")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", what: str = "file") -> Iterator[IO]:
    """Write to a temporary file in the target's folder, fsync, then rename over the target.

    A kill at any moment leaves either the previous file or the complete new one, never a torn write. Running out
    of space (ENOSPC, a quota, a file size limit) removes the temporary file and raises ``DiskFull``: one line
    naming the file, the free space and that the previous ``what`` is intact.
    """
    path = Path(path)
    with writing(path, what):  # the folder or the temporary file cannot be made
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # the mode a plain open() gives (mkstemp's is 0600)
        with writing(path, what), os.fdopen(fd, mode) as f:  # DiskFull measures the space before the clean-up
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """torch.save through atomic_file: a kill or a full disk leaves the old checkpoint intact."""
    with atomic_file(path, what=what) as f:
        torch.save(obj, f)
    return Path(path)


def load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                target: str = "the model") -> None:
    """load_state_dict(strict=True) with a one-line error naming missing/unexpected/mis-shaped keys.

    The line reads ``{what} does not fit {target}: 3 missing (e.g. ...); 2 unexpected (e.g. ...)``."""
    problem = key_mismatch(model.state_dict(), state_dict)
    if problem:
        raise UserError(f"{what} does not fit {target}: {problem}")
    model.load_state_dict(state_dict, strict=True)


def key_mismatch(target: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                 optional: Iterable[str] = ()) -> str:
    """How ``given`` fails to fill ``target`` key for key, in one phrase ("3 missing (e.g. ...); 2 unexpected
    (e.g. ...); 1 with other shapes (e.g. ...)"), or "" when it fits. ``optional`` keys may be missing."""
    optional = set(optional)
    missing = [k for k in target if k not in given and k not in optional]
    unexpected = [k for k in given if k not in target]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(target[k].shape)}"
              for k in target if k in given and tuple(given[k].shape) != tuple(target[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:2])})")
    return "; ".join(parts)


def load_yaml_mapping(path: str | os.PathLike, what: str, mapping_of: str = "") -> dict:
    """A YAML file that must hold a mapping (recipes, study specs): parsed with safe_load, never evaluated."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping{mapping_of}")
    return data
