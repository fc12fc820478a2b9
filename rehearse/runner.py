"""Run the selected paths in order: each step as its command line, a failed step ends its path (the later steps
read its outputs), a path whose input path failed is reported failed without running, and every other path
still runs. The report is rewritten after every path, so a long rehearsal can be read while it runs."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import execute, measure
from .paths import RPath
from .profiles import Profile
from .report import project


def _clean(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run_path(p: RPath, profile: Profile, out: Path, gpus: int, timeout: float | None = None,
             echo: bool = False) -> dict:
    """Run one path; returns its report row."""
    row: dict = {"id": p.id, "group": p.group, "title": p.title, "full": p.full, "swaps": p.swaps, "steps": [],
                 "status": "ok", "reason": "", "log": None, "seconds": 0.0, "peak_mem_mb": None}
    if p.error:
        row.update(status="failed", reason=p.error)
        return row
    _clean(p.clean)
    timings, peak = [], 0.0
    for step in p.steps:
        log = out / "logs" / f"{p.id}.{step.name}.log"
        # the figures this command adds to its metrics file (a resumed run appends to the killed run's)
        metrics = step.metrics if step.timing == "distill" and step.metrics is not None else None
        offset = metrics.stat().st_size if metrics is not None and metrics.is_file() else 0
        started = time.time()
        o = execute.run(step.job, log, profile.launcher, profile.nproc, env=step.env, kill_when=step.kill_when,
                        timeout=timeout, echo=echo)
        text = log.read_text(errors="replace")
        reason = o.reason
        if not reason and step.kill_when is not None and not o.killed:
            reason = f"ended (exit {o.rc}) before {step.kill_when.name} appeared: nothing was killed"
        elif not reason:
            missing = [m for m in step.must_exist if not m.exists()]
            if missing:
                reason = f"exit 0 but {missing[0]} was not written"
            elif step.must_say and not any(m in text for m in step.must_say):
                reason = f"exit 0 but the log lacks {' or '.join(repr(m) for m in step.must_say)}"
        if step.timing == "distill":
            timings.append(measure.distill_times(measure.read_jsonl(step.metrics, offset) if step.metrics else []))
        elif step.timing == "mmengine":
            timings.append(measure.mmengine_times(measure.mmengine_scalars(step.metrics, started)
                                                  if step.metrics else []))
        peak = max(peak, o.peak_mem_mb)
        row["steps"].append({"name": step.name, "command": step.job.command(profile.launcher, profile.nproc),
                             "rc": o.rc, "seconds": round(o.seconds, 1), "peak_mem_mb": o.peak_mem_mb, "load": o.load,
                             "killed": o.killed, "log": str(log), **({"timing": timings[-1]} if step.timing else {})})
        row["seconds"] += o.seconds
        if row["log"] is None or reason:
            row["log"] = str(log)
        if reason:
            row.update(status="failed", reason=f"{step.name}: {reason}")
            break
    row["seconds"] = round(row["seconds"], 1)
    row["peak_mem_mb"] = round(peak, 1)
    if row["steps"]:  # the machine's load while the path ran, weighted by each command's time
        row["load"] = round(sum(s["load"] * s["seconds"] for s in row["steps"])
                            / max(sum(s["seconds"] for s in row["steps"]), 1e-9), 2)
    if timings:
        figures = measure.combine(timings)
        row.update(seconds_per_iter=figures["seconds_per_iter"], includes_warmup=figures["includes_warmup"],
                   cuda_max_mb=figures["cuda_max_mb"])
        row["projection"] = project(p.full, figures["seconds_per_iter"], gpus)
    return row


def run_all(paths: list[RPath], profile: Profile, out: Path, gpus: int, on_row: Callable[[list[dict]], None],
            timeout: float | None = None, echo: bool = False) -> list[dict]:
    rows: list[dict] = []
    status: dict[str, str] = {}
    for i, p in enumerate(paths, 1):
        failed_needs = [n for n in p.needs if status.get(n) not in (None, "ok")]
        t0 = time.time()
        print(f"[{i}/{len(paths)}] {p.id}: {p.title}", flush=True)
        if failed_needs:
            row = {"id": p.id, "group": p.group, "title": p.title, "full": p.full, "swaps": p.swaps, "steps": [],
                   "status": "failed", "reason": f"not run: needs {', '.join(failed_needs)}, which failed",
                   "log": None, "seconds": 0.0}
        else:
            row = run_path(p, profile, out, gpus, timeout, echo)
        status[p.id] = row["status"]
        rows.append(row)
        spi = row.get("seconds_per_iter")
        what = f"{spi:.2f} s/iter" if spi else ""
        print(f"[{i}/{len(paths)}] {p.id}: {row['status']} in {time.time() - t0:.0f} s {what}"
              + (f" -- {row['reason']} (log: {row['log']})" if row["status"] != "ok" else ""), flush=True)
        on_row(rows)
    return rows
