"""The one place that starts this project's own tools as processes (the study and its Slurm tasks, the rehearsal,
the demo).

Why one: every runner needs the same things (this interpreter for ``python`` and ``torchrun``, unbuffered output
copied to a log, a thread count that is set rather than inherited, the log's last line when it fails) and one
failure type the tools turn into one line. Callers keep what is theirs: a study's marker, a rehearsal's memory
sampling and preemption, a Slurm task's requeue signal.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.environment import thread_env
from common.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class JobResult:
    """How a finished tool went: what ran, its exit status and wall time, and where its output is."""
    argv: list[str]
    returncode: int
    seconds: float
    log: Path
    last_line: str


class JobFailed(UserError):
    """A tool we started exited non-zero: one line naming the job, its exit code, its last line and its log."""

    def __init__(self, job_id: str, returncode: int, last_line: str, log: Path | str | None,
                 label: str = "job") -> None:
        self.job_id, self.returncode, self.last_line, self.log, self.label = job_id, returncode, last_line, log, label
        said = f": {last_line}" if last_line else ""
        super().__init__(f"{label} {job_id} failed (exit {returncode}){said} (log: {log})")

    def __reduce__(self):  # picklable with its fields (submitit sends a task's exception back to the submitter)
        return type(self), (self.job_id, self.returncode, self.last_line, self.log, self.label)


def tool_argv(argv: Sequence[str]) -> list[str]:
    """A command as a user writes it, run by this interpreter: ``python`` is this Python, ``torchrun`` is
    ``python -m torch.distributed.run`` (the torchrun of this environment, whatever is first on PATH)."""
    argv = list(argv)
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    elif argv and argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    return argv


def job_env(threads: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, unbuffered output, ``extra``, and when given a thread count that is set, never
    inherited (an exported OMP_NUM_THREADS would otherwise decide it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    if threads is not None:
        env.update(thread_env(threads))
    return env


def last_line(log: Path) -> str:
    """The last non-empty line of a log ('' when there is none)."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def error_line(text: str) -> str:
    """The line that says why a command failed: the tools' one-line ``error: ...``, else a traceback's last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error:" in ln or ln.startswith("AssertionError"):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


class Running:
    """A started tool: its process, its log and its start time.

    ``output``: 'log' (the child writes into the log), 'stream' (copied line by line to the log and the terminal
    by :meth:`pump`) or 'terminal' (the child owns the terminal, e.g. for its progress bars; the log keeps only
    ``header``)."""

    def __init__(self, argv: Sequence[str], log: Path, *, output: str = "log", threads: int | None = None,
                 env: Mapping[str, str] | None = None, header: str = "", log_mode: str = "a",
                 new_session: bool = False, preexec_fn: Callable[[], None] | None = None, cwd: Path = ROOT) -> None:
        if output not in ("log", "stream", "terminal"):
            raise ValueError(f"output must be 'log', 'stream' or 'terminal', not {output!r}")
        self.argv, self.log, self.output = tool_argv(argv), Path(log), output
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.log, log_mode)
        if header:
            self.f.write(header)
            self.f.flush()
        stdout = {"log": self.f, "stream": subprocess.PIPE, "terminal": None}[output]
        self.t0 = time.time()
        try:
            self.proc = subprocess.Popen(self.argv, cwd=cwd, stdout=stdout,
                                         stderr=subprocess.STDOUT if output != "terminal" else None,
                                         text=True, bufsize=1, env=job_env(threads, env),
                                         start_new_session=new_session, preexec_fn=preexec_fn)
        except BaseException:
            self.f.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def pump(self, prefix: str = "") -> None:
        """Copy a streamed tool's output to its log and the terminal until it ends."""
        if self.proc.stdout is None:
            return
        for line in self.proc.stdout:
            self.f.write(line)
            sys.stdout.write(prefix + line)
        sys.stdout.flush()

    def wait(self) -> JobResult:
        """Wait for the end (after :meth:`pump` when streamed) and describe it."""
        rc = self.proc.wait()
        seconds = time.time() - self.t0
        self.f.close()
        said = last_line(self.log) if self.output != "terminal" else ""  # the log holds only the header then
        return JobResult(self.argv, rc, seconds, self.log, said)

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (checkpoints are written atomically, so either is safe)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.f.close()


def run(argv: Sequence[str], log: Path, prefix: str = "", **kwargs) -> JobResult:
    """Run a tool to its end (see :class:`Running` for the keywords; ``prefix`` starts each streamed line on the
    terminal); never raises for its exit status."""
    r = Running(argv, log, **kwargs)
    try:
        r.pump(prefix)
        return r.wait()
    except BaseException:
        r.stop(grace=10)
        raise


def check(result: JobResult, job_id: str, label: str = "job") -> JobResult:
    """The result when the tool exited 0, else :class:`JobFailed`."""
    if result.returncode != 0:
        raise JobFailed(job_id, result.returncode, result.last_line, result.log, label)
    return result
