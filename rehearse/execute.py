"""Run one command of a rehearsal as the user would, with its log, and measure it: wall time, the peak memory of
its whole process tree (dataloader workers and torchrun ranks included), and, for the one command
that rehearses a preemption, a kill of the process group once a file appears.

Unlike ``study.runner.run_all`` (which stops a study at its first failure and resumes finished jobs), every
command here runs every time, and a failure is recorded, not raised: the next path still runs.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.jobs import Running, error_line, tool_argv
from study.spec import Job

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Outcome:
    rc: int
    seconds: float
    peak_mem_mb: float  # the process tree's summed PSS, sampled every ``mem_every`` seconds or so
    load: float  # the machine's mean 1-minute load average while it ran (above the core count: shared cores)
    killed: bool
    log: Path
    reason: str  # '' when it went as expected


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between their sharers), else the resident set size."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_memory_mb(pid: int) -> float:
    """Memory of ``pid`` and all its descendants: summed PSS, so the pages that forked dataloader workers share
    with their parent count once (summed RSS would count them once per worker)."""
    kids = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        total += _pss_bytes(p)
    return total / 2**20


def run(job: Job, log: Path, launcher: str = "none", nproc: int = 1, env: dict | None = None,
        kill_when: Path | None = None, timeout: float | None = None, poll: float = 0.5, mem_every: float = 2.0,
        echo: bool = False) -> Outcome:
    """Run ``job`` in its own process group, its output into ``log``; never raises for the command's failure.

    ``kill_when``: SIGKILL the whole group as soon as this file exists and is not empty (a preemption; the rc is
    then expected to be non-zero); checked every ``poll`` seconds. Memory is sampled every ``mem_every`` seconds
    or less often, so that sampling takes at most 2% of a core. ``timeout``: seconds before the group is killed and the step reported failed.
    """
    argv = tool_argv(job.argv(launcher, nproc, python=sys.executable))
    peak, killed, timed_out, loads = 0.0, False, False, []
    next_sample = 0.0  # memory samples cost ~0.1 s for a few GB of processes: at most 2% of a core on them
    t0 = time.time()
    r = Running(argv, log, env=env, header=f"$ {shlex.join(job.argv(launcher, nproc))}\n", log_mode="w",
                new_session=True)
    try:
        while r.poll() is None:
            now = time.time()
            if now >= next_sample:
                peak = max(peak, tree_memory_mb(r.pid))
                loads.append(os.getloadavg()[0])
                next_sample = now + max(mem_every, 50 * (time.time() - now))
            if kill_when is not None and kill_when.exists() and kill_when.stat().st_size > 0:
                os.killpg(r.pid, signal.SIGKILL)
                killed = True
                break
            if timeout is not None and time.time() - t0 > timeout:
                os.killpg(r.pid, signal.SIGKILL)
                timed_out = True
                break
            time.sleep(poll)
        rc = r.wait().returncode
    except BaseException:  # Ctrl-C of the rehearsal: take the command down with it
        os.killpg(r.pid, signal.SIGKILL)
        r.wait()
        raise
    finally:
        try:  # stray workers left by a killed parent
            os.killpg(r.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    seconds = time.time() - t0
    text = log.read_text(errors="replace")
    if echo:
        sys.stdout.write(text)
    reason = ""
    if timed_out:
        reason = f"timed out after {timeout:.0f} s"
    elif killed:
        reason = ""
    elif rc != 0:
        reason = f"exit {rc}: {error_line(text)}"
    load = round(sum(loads) / len(loads), 2) if loads else os.getloadavg()[0]
    return Outcome(rc, seconds, round(peak, 1), load, killed, log, reason)
