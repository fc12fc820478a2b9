"""What the cluster knows about a study's jobs: the submission records and Slurm's own commands.

Each submitted study job leaves ``<out>/slurm/<id>.json`` (its Slurm job id, what it was submitted with, its
logs). ``squeue`` says which of them are still queued or running; ``sacct`` how the others ended. A job that is
queued or running is never submitted twice.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from common.io import UserError, atomic_file

# sacct's final states that mean the job will not write its outputs
FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def record_path(out: Path, job_id: str) -> Path:
    return out / "slurm" / (job_id.replace("/", "__") + ".json")


def read_record(out: Path, job_id: str) -> dict | None:
    try:
        return json.loads(record_path(out, job_id).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(out: Path, job_id: str, record: dict) -> None:
    p = record_path(out, job_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(p, "w") as f:
        json.dump(record, f, indent=2)


def require_slurm() -> None:
    """One clear line when this machine cannot submit (submitit needs srun as well as sbatch)."""
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if missing:
        raise UserError(f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH (not found): run it on the "
                        "cluster's login node, or use --executor local to run the jobs on this machine")


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"{argv[0]} is not on PATH: cannot ask Slurm about the study's jobs") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{argv[0]} did not answer within 120 s") from None
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise UserError(f"{argv[0]} failed: {msg}")
    return r.stdout


def slurm_states(ids: list[str]) -> dict[str, str]:
    """Slurm id -> state: squeue's for queued or running jobs, sacct's final state for the others ('' when
    accounting does not know the job)."""
    ids = [str(i) for i in ids if i]
    if not ids:
        return {}
    states: dict[str, str] = {}
    for line in _run(["squeue", "--noheader", "--format=%i|%T", f"--user={getpass.getuser()}"]).splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in ids:
            states[jid] = state.strip().upper() or "PENDING"
    rest = [i for i in ids if i not in states]
    if rest and shutil.which("sacct"):
        try:
            text = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                         f"--jobs={','.join(rest)}"])
        except UserError:  # accounting disabled: those jobs are known to have left the queue, no more
            text = ""
        for line in text.splitlines():
            jid, _, state = line.strip().partition("|")
            if jid in rest:
                states[jid] = (state.split() or [""])[0].upper()  # "CANCELLED by 123" -> CANCELLED
    return {i: states.get(i, "") for i in ids}


def queued(state: str) -> bool:
    """Still in Slurm's queue (pending, running, requeued, ...): it must not be submitted again."""
    return bool(state) and state not in FAILED and state != "COMPLETED"


def local_alive(pid: str | int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def cancel(ids: list[str]) -> None:
    if ids:
        _run(["scancel", *ids])


def cancel_local(pids: list[str]) -> None:
    for pid in pids:  # submitit's local controller stops its tasks on SIGINT
        try:
            os.kill(int(pid), signal.SIGINT)
        except (OSError, ValueError):
            pass
