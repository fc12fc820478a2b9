"""requirements/lock.txt: what it pins, whether it is older than its inputs, what is installed beside it.

The lock is made by uv from requirements/pins.txt and pyproject.toml's dependencies (`make lock`); its first line
records a digest of those inputs, so a pin changed without a new lock is caught (tests/test_environment.py).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
PINS = ROOT / "requirements" / "pins.txt"
PROJECT = "vanillakd"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def normalize(name: str) -> str:
    """PEP 503 name normalisation (Pillow -> pillow, typing_extensions -> typing-extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def input_digest(pins: Path = PINS, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """Digest of what the lock is resolved from: the pins and the project's dependency tables (not the rest
    of pyproject.toml, so a pytest marker does not ask for a new lock)."""
    meta = tomllib.loads(pyproject.read_text())
    project = meta.get("project", {})
    relevant = {"dependencies": project.get("dependencies"), "extras": project.get("optional-dependencies"),
                "python": project.get("requires-python"), "uv": meta.get("tool", {}).get("uv")}
    h = hashlib.sha256(pins.read_bytes())
    h.update(repr(sorted(relevant.items())).encode())
    return h.hexdigest()[:16]


def recorded_digest(lock: Path = LOCK) -> str | None:
    first = lock.read_text().splitlines()[0] if lock.is_file() else ""
    m = re.match(r"# input digest: ([0-9a-f]+)", first)
    return m.group(1) if m else None


def locked(lock: Path = LOCK) -> dict[str, str]:
    """{normalized name: version} of every package the lock pins."""
    out = {}
    for line in lock.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def installed() -> dict[str, str]:
    """{normalized name: version} of the running interpreter's environment (its site-packages), the project itself
    left out. Only site-packages is read: once something imports setuptools, its vendored packages
    (setuptools/_vendor/*.dist-info) are on sys.path too, and they are not installed packages."""
    out = {}
    paths = sysconfig.get_paths()
    for dist in importlib.metadata.distributions(path=list(dict.fromkeys([paths["purelib"], paths["platlib"]]))):
        name = dist.metadata["Name"]
        if name and normalize(name) != PROJECT:
            out[normalize(name)] = dist.version
    return out


def differences(want: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per package that is missing, extra or at another version than the lock says."""
    lines = [f"missing: {n}=={v}" for n, v in sorted(want.items()) if n not in have]
    lines += [f"extra: {n}=={v}" for n, v in sorted(have.items()) if n not in want]
    lines += [f"other version: {n} {have[n]} (lock: {v})" for n, v in sorted(want.items())
              if n in have and have[n] != v]
    return lines


def extra_packages(lock: Path = LOCK) -> list[str]:
    """Installed packages the lock does not have (scripts/install.sh removes them)."""
    want = locked(lock)
    return sorted(n for n in installed() if n not in want)
