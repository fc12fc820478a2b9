"""report.json and report.md: each path ok or failed (one-line reason, log), seconds per iteration, peak memory,
and the projected wall time of its full schedule on this machine and on N processes (``--gpus N``).

Projection: the measured seconds per iteration at the rehearsal's per-process batch give images per second
per process; the full schedule is the recipe's or config's epochs over the real dataset (1,281,167 ImageNet or
118,287 COCO train images unless the user's data says otherwise), at that rate times the processes, assuming
linear scaling. Training only: validation passes and start-up are not counted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common.environment import fingerprint, short
from common.io import atomic_file


def project(full: dict | None, seconds_per_iter: float | None, gpus: int) -> dict | None:
    if not full or not seconds_per_iter:
        return None
    per_process = full["batch"] / seconds_per_iter
    images = full["epochs"] * full["images"]
    return {"images_per_second": round(per_process * full["nproc"], 2),
            "images_per_second_per_process": round(per_process, 3),
            "epochs": full["epochs"], "dataset_images": full["images"],
            "iterations_at_global_batch": round(full["epochs"] * (full["images"] // full["global_batch"])),
            "global_batch": full["global_batch"],
            "seconds_here": round(images / (per_process * full["nproc"])),
            "seconds_at_gpus": round(images / (per_process * gpus)), "gpus": gpus}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 100 * 86400:
        return f"{seconds / 86400:.1f} d"
    return f"{seconds / 86400:,.0f} d"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def write(out: Path, meta: dict, rows: list[dict]) -> dict:
    """Write report.json and report.md under ``out``; returns the JSON object."""
    rep = {**meta, "paths": rows, "failed": [r["id"] for r in rows if r["status"] != "ok"],
           "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "environment": fingerprint()}
    with atomic_file(out / "report.json", "w") as f:
        json.dump(rep, f, indent=2)
    with atomic_file(out / "report.md", "w") as f:
        f.write(markdown(rep))
    return rep


def markdown(rep: dict) -> str:
    gpus = rep["gpus"]
    ok = sum(r["status"] == "ok" for r in rep["paths"])
    lines = [f"# Rehearsal: {ok} of {len(rep['paths'])} paths ok", "",
             f"- command: `{rep['command']}`", f"- profile: {rep['profile']}; machine: {rep['machine']}",
             f"- started {rep['started']}, wall time {duration(rep.get('seconds'))}",
             f"- environment: {short(rep['environment'])}" if rep.get("environment") else "- environment: not recorded", ""]
    lines += ["## What the profile changes", ""] + [f"- {d}" for d in rep["profile_changes"]] + [""]
    lines += ["## Data", ""] + [f"- {d}" for d in rep["data_notes"]] + [""]
    lines += ["## Paths", "",
              f"s/iter: seconds per training iteration at the rehearsal's batch, the first iteration of each process "
              f"left out ('1st iter': every process ran one iteration, so only first iterations were timed); img/s: images per second over all processes; peak memory: the largest summed PSS of a command's process tree (workers included; shared pages counted once); "
              f"full schedule: the recipe's or config's epochs over the real dataset at that rate, here and on "
              f"{gpus} processes as fast as one measured here (linear scaling), training only; load: the machine's "
              f"1-minute load average while the path ran (above its {rep['cpus']} cores, other processes shared them "
              f"and the times are pessimistic).", "",
              f"| path | status | s/iter | batch x procs | img/s | peak memory MB | CUDA max MB | full schedule here | "
              f"on {gpus} | load | wall s | log |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["paths"]:
        pr = r.get("projection") or {}
        full = r.get("full") or {}
        spi = _num(r.get("seconds_per_iter"), "{:.2f}") + (" (1st iter)" if r.get("includes_warmup") else "")
        bp = f"{full['batch']} x {full['nproc']}" if full else "-"
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}**"
        lines.append(f"| {r['id']} | {status} | {spi} | {bp} | {_num(pr.get('images_per_second'), '{:.3g}')} | "
                     f"{_num(r.get('peak_mem_mb'), '{:.0f}')} | {_num(r.get('cuda_max_mb'), '{:.0f}')} | "
                     f"{duration(pr.get('seconds_here'))} | {duration(pr.get('seconds_at_gpus'))} | "
                     f"{_num(r.get('load'), '{:.1f}')} | {r.get('seconds', 0):.0f} | {r.get('log') or '-'} |")
    failed = [r for r in rep["paths"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {r['id']}: {r['reason']} (log: {r.get('log')})" for r in failed]
    sched = [r for r in rep["paths"] if r.get("projection")]
    if sched:
        lines += ["", "## Full schedules", "", "| path | schedule | epochs x images | iterations at global batch |",
                  "|---|---|---|---|"]
        for r in sched:
            pr = r["projection"]
            lines.append(f"| {r['id']} | {r['full']['source']} | {pr['epochs']} x {pr['dataset_images']:,} | "
                         f"{pr['iterations_at_global_batch']:,} at {pr['global_batch']} |")
    swapped = [r for r in rep["paths"] if r.get("swaps")]
    if swapped:
        lines += ["", "## GPU-only parts swapped (this profile)", ""]
        lines += [f"- {r['id']}: " + "; ".join(r["swaps"]) for r in swapped]
    lines += ["", "## Commands", ""]
    for r in rep["paths"]:
        for s in r.get("steps", []):
            lines.append(f"- {r['id']} / {s['name']}: `{s['command']}`")
    return "\n".join(lines) + "\n"
