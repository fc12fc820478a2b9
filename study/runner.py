"""Run a study's jobs in order, skipping finished ones, so a killed study continues where it stopped.

A job is finished when its marker (``<out>/jobs/<id>.json``, written only after the command exited 0) holds
the same command and every output it promises exists. A job that was interrupted continues with ``--resume``
(distillation from ``last.pth``, detection from mmengine's ``last_checkpoint``); a changed command reruns.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from common.io import UserError, atomic_file
from common.jobs import Running, check, tool_argv

from .spec import Job

ROOT = Path(__file__).resolve().parent.parent


def marker_path(out: Path, job: Job) -> Path:
    return out / "jobs" / (job.id.replace("/", "__") + ".json")


def is_done(out: Path, job: Job, launcher: str, nproc: int) -> bool:
    return marker_matches(out, job, job.command(launcher, nproc))


def marker_matches(out: Path, job: Job, command: str) -> bool:
    """The job finished with this very command and its outputs are still there."""
    m = marker_path(out, job)
    if not m.is_file() or not all(p.exists() for p in job.outputs):
        return False
    try:
        return json.loads(m.read_text()).get("command") == command
    except (OSError, json.JSONDecodeError):
        return False


def finish_job(out: Path, job: Job, command: str, seconds: float, log: Path, threads: int | None = None) -> None:
    """After the command exited 0: check its outputs, then write its marker (the job counts as finished). The
    marker records the threads the job ran with (the command does not say it, and it changes the numbers)."""
    missing = [str(p) for p in job.outputs if not p.exists()]
    if missing:
        raise UserError(f"study job {job.id} exited 0 but did not write {', '.join(missing)} (log: {log})")
    m = marker_path(out, job)
    m.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(m, "w") as f:
        json.dump({"id": job.id, "command": command, "seconds": round(seconds, 1), "threads": threads,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=2)


def log_path(out: Path, job: Job) -> Path:
    return out / "logs" / (job.id.replace("/", "__") + ".log")


def exec_argv(job: Job, launcher: str, nproc: int) -> list[str]:
    """The job's command with this interpreter, with ``--resume`` once its checkpoint exists."""
    argv = tool_argv(job.argv(launcher, nproc, python=sys.executable))
    if job.resume_if is not None and job.resume_if.exists():
        argv.append("--resume")
    return argv


def start_job(out: Path, job: Job, launcher: str, nproc: int, stream: bool, threads: int) -> Running:
    """Start a job (its output to its log, and to the terminal when ``stream``) with ``threads`` threads."""
    argv = exec_argv(job, launcher, nproc)
    return Running(argv, log_path(out, job), output="stream" if stream else "log", threads=threads,
                   header=f"$ {shlex.join(argv)}\n# threads: {threads}\n")


def end_job(out: Path, job: Job, r: Running, launcher: str, nproc: int, threads: int) -> float:
    """Check the ended job and write its marker; returns its seconds (JobFailed when it exited non-zero)."""
    res = check(r.wait(), job.id, label="study job")
    finish_job(out, job, job.command(launcher, nproc), res.seconds, res.log, threads)
    return res.seconds


def eta_seconds(pending: list[Job], finished: dict[str, float], kinds: dict[str, str], parallel: int) -> float | None:
    """Seconds left, from the jobs finished so far: each pending job costs the mean of the finished jobs of its
    kind (distill calls by variant too), else the mean of all finished; spread over ``parallel`` slots. None
    before any job has finished (nothing to estimate from)."""
    if not finished:
        return None
    by_kind: dict[str, list[float]] = {}
    for jid, sec in finished.items():
        by_kind.setdefault(kinds[jid], []).append(sec)
    overall = sum(finished.values()) / len(finished)
    total = sum(sum(by_kind[k]) / len(by_kind[k]) if (k := kinds[j.id]) in by_kind else overall for j in pending)
    return total / max(1, parallel)


def job_kind(job: Job) -> str:
    """What makes jobs comparable in cost: their tool, and for distillation calls the cell's variant and the
    number of settings it trains."""
    if job.kind != "distill":
        return job.kind
    return f"distill/{job.meta.get('variant', 'main')}/{len(job.meta.get('settings', {}))}x{job.meta.get('steps_factor', 1)}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(done: int, total: int, elapsed: float, eta: float | None) -> str:
    """The study's live line: jobs done / total, elapsed wall time, estimated time left."""
    return f"study: {done}/{total} jobs done, {_clock(elapsed)} elapsed, about {_clock(eta)} left"


def run_all(out: Path, jobs: list[Job], launcher: str = "none", nproc: int = 1, quiet: bool = False,
            parallel: int = 1, threads: int = 1) -> dict:
    """Run every unfinished job, ``parallel`` at a time, each with ``threads`` threads, each once the jobs it
    reads from are finished.

    Returns {'ran': [...], 'skipped': [...], 'seconds': {...}}. With one job at a time the output is shown
    (unless ``quiet``); with several it goes to the logs only. A failed job stops the study once the jobs
    still running have ended (their results are kept)."""
    ran, skipped, seconds = [], [], {}
    order = {j.id: i for i, j in enumerate(jobs, 1)}
    done: set[str] = set()
    for job in jobs:
        if is_done(out, job, launcher, nproc):
            skipped.append(job.id)
            done.add(job.id)
            print(f"[{order[job.id]}/{len(jobs)}] {job.id}: finished earlier, skipped", flush=True)
    waiting = [j for j in jobs if j.id not in done]
    running: list[tuple[Job, Running]] = []
    kinds = {j.id: job_kind(j) for j in jobs}
    # earlier calls' finished jobs (their markers) inform the estimate too: a resumed study knows its costs
    finished = {jid: sec for jid, sec in job_seconds(out, jobs).items() if jid in done}
    t0 = time.time()
    error: UserError | None = None
    try:
        while waiting or running:
            while error is None and len(running) < parallel:
                ready = next((j for j in waiting if all(d in done for d in j.after)), None)
                if ready is None:
                    break
                waiting.remove(ready)
                how = " (continuing with --resume)" if ready.resume_if is not None and ready.resume_if.exists() else ""
                print(f"[{order[ready.id]}/{len(jobs)}] {ready.id}{how}: {ready.command(launcher, nproc)}", flush=True)
                r = start_job(out, ready, launcher, nproc, stream=parallel == 1 and not quiet, threads=threads)
                if r.output == "stream":
                    r.pump("    ")  # returns when the job's output ends
                running.append((ready, r))
            if not running:
                break  # a failure left jobs waiting on it
            ended = [(j, r) for j, r in running if r.output == "stream" or r.poll() is not None]
            if not ended:
                time.sleep(0.5)
                continue
            for job, r in ended:
                running.remove((job, r))
                try:
                    seconds[job.id] = round(end_job(out, job, r, launcher, nproc, threads), 1)
                except UserError as e:
                    error = error or e
                    continue
                done.add(job.id)
                ran.append(job.id)
                finished[job.id] = seconds[job.id]
                print(f"[{order[job.id]}/{len(jobs)}] {job.id}: done in {seconds[job.id]:.0f} s", flush=True)
                pending = [j for j in jobs if j.id not in done]
                # the running jobs are counted whole: a slight overestimate, never a promise
                print(progress_line(len(done), len(jobs), time.time() - t0,
                                    eta_seconds(pending, finished, kinds, parallel)), flush=True)
            if error is not None and not running:
                break
    except KeyboardInterrupt:
        for _, r in running:
            r.stop(grace=60)
        raise
    if error is not None:
        raise error
    return {"ran": ran, "skipped": skipped, "seconds": seconds}


def job_threads(out: Path, jobs: list[Job]) -> dict[str, int | None]:
    """Threads each finished job ran with (from its marker; None for markers written before it was recorded)."""
    found = {}
    for job in jobs:
        try:
            found[job.id] = json.loads(marker_path(out, job).read_text()).get("threads")
        except (OSError, json.JSONDecodeError):
            pass
    return found


def job_seconds(out: Path, jobs: list[Job]) -> dict[str, float]:
    """Seconds each finished job took when it ran (from its marker), also for jobs skipped this time."""
    out_d = {}
    for job in jobs:
        m = marker_path(out, job)
        if m.is_file():
            try:
                out_d[job.id] = float(json.loads(m.read_text())["seconds"])
            except (OSError, ValueError, KeyError):
                pass
    return out_d
