"""What ``python tools/study.py`` does once its arguments are parsed: expand the spec, run its jobs inline
(study.runner) or as submitit job objects (study.cluster: --executor local|slurm, --status, --cancel), and write
the report.

Why here: tools/study.py stays its parser, and this logic is importable and testable in-process.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common.environment import gpu_present, threads_for
from common.io import UserError, load_yaml_mapping

from .spec import expand, load_spec

ROOT = str(Path(__file__).resolve().parent.parent)


def run_study(a: argparse.Namespace) -> dict | None:
    """tools/study.py's arguments -> the report (None for --dry-run, --status, --cancel and a Slurm submission)."""
    profile = a.profile
    if profile == "auto":  # the spec read once as the user wrote it (a bad one is a one-line error here)
        has_gpu_profile = "gpu" in (load_yaml_mapping(a.spec, "study spec").get("profiles") or {})
        profile = "gpu" if has_gpu_profile and not a.dry_run and gpu_present() else "default"
    spec = load_spec(a.spec, profile)
    out = Path(a.out or Path("work_dirs") / "study" / spec["name"])
    if a.nproc is not None and a.nproc < 1:
        raise UserError("--nproc must be at least 1")
    if a.jobs < 1:
        raise UserError("--jobs must be at least 1")
    if a.threads is not None and a.threads < 1:
        raise UserError("--threads must be at least 1")
    nproc = a.nproc or 2
    procs = a.jobs * (nproc if a.launcher == "torchrun" else 1)
    a.threads = threads_for(procs, a.threads) if a.executor != "slurm" else a.threads
    inherited = os.environ.get("OMP_NUM_THREADS")
    if a.threads is not None and inherited is not None and inherited != str(a.threads) and not (a.status or a.cancel or a.dry_run):
        print(f"study: OMP_NUM_THREADS={inherited} in the environment; each job runs with {a.threads} thread(s) "
              "(--threads to choose)", flush=True)
    jobs = expand(spec, out, a.data_dir)
    if a.executor != "inline" or a.status or a.cancel:
        return _on_executor(a, spec, out, jobs)
    if a.dry_run:
        for job in jobs:
            print(job.command(a.launcher, nproc))
        return None
    data = spec.get("data") or {}
    root = a.data_dir or data.get("root")
    if data.get("shapes") is None and not Path(str(root)).exists():  # the built-in world is generated instead
        raise UserError(f"data folder not found: {root} (give --data-dir)")
    from .runner import job_seconds, job_threads, run_all
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text("".join(j.command(a.launcher, nproc) + "\n" for j in jobs))
    t0 = time.time()
    status = {"ran": [], "skipped": [j.id for j in jobs], "seconds": {}}
    if not a.report_only:
        print(f"study {spec['name']} (profile {spec['profile']}): {len(jobs)} jobs -> {out}", flush=True)
        status = run_all(out, jobs, a.launcher, nproc, a.quiet, a.jobs, a.threads)
    secs = job_seconds(out, jobs)
    meta = {"jobs": len(jobs), "ran": len(status["ran"]), "skipped": len(status["skipped"]),
            "seconds_total": round(sum(secs.values()), 1), "seconds_this_call": round(time.time() - t0, 1),
            "job_seconds": secs, "job_threads": job_threads(out, jobs), "threads": a.threads,
            "cpus": os.cpu_count(), "gpu": gpu_present(), "launcher": a.launcher,
            "commands": [j.command(a.launcher, nproc) for j in jobs]}
    return _report(out, spec, jobs, meta)


def _report(out: Path, spec: dict, jobs: list, meta: dict) -> dict:
    from .report import write
    rep = write(out, spec, jobs, meta)
    if rep.get("environment_warning"):
        print(f"warning: {rep['environment_warning']}")
    for c in rep["checks"]:
        print(f"- check {'met' if c['met'] else 'NOT met'}: {c['sentence']}")
    for c in rep["claims"]:
        print(f"- {c['verdict']}: {c['sentence']}")
    print(f"report: {out / 'report.md'}")
    return rep


RESOURCE_FLAGS = ("partition", "account", "qos", "constraint", "nodes", "gpus_per_node", "tasks_per_node",
                  "cpus_per_task", "mem_gb", "timeout_min")


def _on_executor(a: argparse.Namespace, spec: dict, out: Path, jobs: list) -> dict | None:
    """--executor local|slurm, --status, --cancel: the same jobs as submitit job objects (study/cluster.py)."""
    from study.cluster import Study, print_lines
    from study.resources import has_resources
    from .runner import job_seconds, job_threads
    from study.spec import Job
    overrides = {k: getattr(a, k) for k in RESOURCE_FLAGS}
    executor = a.executor if a.executor != "inline" else "slurm"
    report_job = None
    if executor == "slurm":  # the last job writes the report, once every other one succeeded
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items() if v is not None]
        args = [os.path.abspath(a.spec), "--out", os.path.abspath(out), "--profile", spec["profile"],
                "--report-only", "--executor", "slurm", *flags]
        if a.data_dir:
            args += ["--data-dir", os.path.abspath(a.data_dir)]
        report_job = Job("report", "report", "tools/study.py", args, [out / "report.json"])
    study = Study(out, spec, jobs, executor, overrides, report_job, parallel=a.jobs, threads=a.threads)
    if a.status:
        print_lines(study.status_lines())
        return None
    if a.cancel:
        ids = study.cancel()
        print(f"cancelled {len(ids)} job(s){': ' + ' '.join(ids) if ids else ''}")
        return None
    if executor == "slurm" and not a.report_only and not has_resources(spec):
        raise UserError(f"study spec {a.spec} has no slurm: section (the resources of its jobs), which "
                        "--executor slurm needs: add one (see configs/study/imagenet_data_scale.yaml)")
    if a.dry_run:
        for job in jobs:
            deps = [d for d in job.after]
            print(f"# {job.id}: {study.res[job.id].describe()}" + (f"; after {', '.join(deps)}" if deps else ""))
            print(study.command(job))
        return None
    data = spec.get("data") or {}
    root = a.data_dir or data.get("root")
    if data.get("shapes") is None and not Path(str(root)).exists():
        raise UserError(f"data folder not found: {root} (give --data-dir)")
    # the jobs unpickle study.task from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    out.mkdir(parents=True, exist_ok=True)
    commands = [study.command(j) for j in jobs]
    (out / "commands.txt").write_text("".join(c + "\n" for c in commands))
    t0 = time.time()
    status = {"ran": [], "skipped": [j.id for j in jobs], "seconds": {}}
    if not a.report_only:
        print(f"study {spec['name']} (profile {spec['profile']}): {len(jobs)} jobs -> {out} ({executor})", flush=True)
        if executor == "slurm":
            study.submit_slurm()
            print(f"follow it: python tools/study.py {a.spec} --out {out} --status")
            return None
        status = study.run_local()
    secs = job_seconds(out, jobs)
    meta = {"jobs": len(jobs), "ran": len(status["ran"]), "skipped": len(status["skipped"]),
            "seconds_total": round(sum(secs.values()), 1), "seconds_this_call": round(time.time() - t0, 1),
            "job_seconds": secs, "job_threads": job_threads(out, jobs), "threads": a.threads,
            "cpus": os.cpu_count(), "gpu": gpu_present(), "launcher": executor,
            "commands": commands}
    return _report(out, spec, jobs, meta)

