"""The environment fingerprint every report carries, and the thread count a job is given.

Why: the same command gave other top-1 figures after a fresh install (the registry had moved the packages under
the pinned ones) and with another thread count; bf16 results and speed depend on the CPU's matrix units (AMX).
A report that names its lock, commit, CPU flags and threads can be compared with another, and a study or the
demo can say when its runs came from different environments. Torch-free unless torch is already imported
(tools such as tools/coco_eval.py start without it).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ROOT / "requirements" / "lock.txt"
PACKAGES = ("torch", "timm", "mmdet", "mmcv", "mmengine", "numpy", "pillow")
# CPU features that change numerics (bf16/int8 matrix units, FMA, AVX-512 kernels) or speed by an order
NUMERIC_CPU_FLAGS = ("fma", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
                     "amx_bf16", "amx_tile", "amx_int8")
THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# caps on the kernels torch and oneDNN pick (an AVX-512 CPU run as an AVX2-only one: docs/environment.md)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
# fields whose difference makes two runs' numbers incomparable (threads included: they change reductions)
KEY_FIELDS = ("python", "packages", "lock_sha256", "git_commit", "cpu_model", "cpu_flags", "torch_threads", "gpu",
              "kernel_env")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def lock_sha256(path: Path = LOCK_FILE) -> str | None:
    """First 16 hex digits of the lock file's sha256 (None when the checkout has none)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def cpu_info() -> tuple[str | None, list[str]]:
    """The CPU model and which of NUMERIC_CPU_FLAGS it has (Linux /proc/cpuinfo; elsewhere the platform's name)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        model = platform.processor() or None
    return model, [f for f in NUMERIC_CPU_FLAGS if f in flags]


def _gpu(torch: Any) -> dict | None:
    if torch is None or not torch.cuda.is_available():
        return None
    driver = None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        driver = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "driver": driver}


def gpu_present() -> bool:
    """Whether nvidia-smi sees a GPU, without importing torch (a study picks its spec's gpu profile by it)."""
    import shutil
    if not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _set_in_env(names: tuple[str, ...]) -> dict[str, str]:
    return {k: os.environ[k] for k in names if k in os.environ}


def fingerprint() -> dict[str, Any]:
    """The `environment` block of summary.json, results.json and every report.json."""
    torch = sys.modules.get("torch")
    model, flags = cpu_info()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "lock_file": str(LOCK_FILE.relative_to(ROOT)), "lock_sha256": lock_sha256(),
        "git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
        "cpu_model": model, "cpu_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "threads_env": _set_in_env(THREADS_ENV),
        "kernel_env": _set_in_env(KERNEL_ENV),
        "gpu": _gpu(torch),
    }


def environment_key(env: dict | None) -> tuple:
    """What two runs must share for their numbers to be compared (see KEY_FIELDS)."""
    env = env or {}
    # no kernel caps recorded (runs written before the field) is no caps
    return tuple(repr(env.get(k) or {}) if k == "kernel_env" else repr(env.get(k)) for k in KEY_FIELDS)


def mixed_environments(envs: list[dict | None]) -> str | None:
    """One line when the runs of one report come from different environments (None when they agree).
    Runs written before they recorded an environment count as an environment of their own."""
    keys = {environment_key(e) for e in envs}
    if len(keys) <= 1:
        return None
    differ = [k for i, k in enumerate(KEY_FIELDS) if len({key[i] for key in keys}) > 1]
    return (f"the {len(envs)} runs of this report come from {len(keys)} different environments "
            f"(they differ in {', '.join(differ)}): their numbers are not strictly comparable")


def short(env: dict) -> str:
    """The fingerprint in one line, for the tables of README and docs."""
    pk = env.get("packages") or {}
    dirty = "+dirty" if env.get("git_dirty") else ""
    flags = ",".join(env.get("cpu_flags") or []) or "none"
    gpu = f"; GPU {env['gpu']['name']}" if env.get("gpu") else ""
    caps = env.get("kernel_env") or {}
    capped = (f", kernels capped at {env.get('torch_cpu_capability')} ("
              + " ".join(f"{k}={v}" for k, v in caps.items()) + ")") if caps else ""
    return (f"lock {env.get('lock_sha256')}, commit {(env.get('git_commit') or '?')[:7]}{dirty}, torch {pk.get('torch')}, "
            f"{env.get('torch_threads')} thread(s), CPU {env.get('cpu_model')} [{flags}]{capped}{gpu}")


def threads_for(jobs: int, threads: int | None = None) -> int:
    """Threads per job when ``jobs`` run at once on this machine: ``threads`` if given, else cores / jobs."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def thread_env(threads: int) -> dict[str, str]:
    """Environment that gives a child process exactly ``threads`` threads (torch reads it at import; the tools
    also call torch.set_num_threads from it through apply_thread_env)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "VANILLAKD_THREADS": str(threads)}


def apply_thread_env() -> int | None:
    """In a tool: set torch's thread count to VANILLAKD_THREADS when a job runner gave one; returns it."""
    value = os.environ.get("VANILLAKD_THREADS")
    if not value:
        return None
    n = int(value)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
