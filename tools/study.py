#!/usr/bin/env python
"""Run one of the paper's studies as a grid of real runs, resumably, and report it.

    python tools/study.py configs/study/mini.yaml                    # both studies in miniature (make study)
    python tools/study.py configs/study/imagenet_data_scale.yaml --data-dir IMAGENET --dry-run
    python tools/study.py configs/study/imagenet_data_scale.yaml --data-dir IMAGENET --launcher torchrun --nproc 8
    python tools/study.py configs/study/imagenet_data_scale.yaml --data-dir IMAGENET --executor slurm --partition P
    python tools/study.py configs/study/imagenet_data_scale.yaml --data-dir IMAGENET --status

The spec expands into exactly the tools/make_shapes.py, tools/distill.py, tools/transfer.py and tools/test.py
commands a user would type (--dry-run prints them, one per line: paste them into a job array). Settings that
share data and the teacher train in one distill.py call (one teacher forward per batch). Finished runs are
skipped, interrupted ones continue with --resume, so a killed study is started again with the same command.
At the end: <out>/report.md, report.json, commands.txt and plots. --executor slurm submits the whole study
to Slurm at once (one job per command, afterok dependencies, requeued with --resume when preempted) and
returns; --status and --cancel follow it (docs/cluster.md).
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.environment import threads_for  # noqa: E402
from common.io import UserError, cli_main  # noqa: E402
from study.spec import expand, load_spec  # noqa: E402


def _gpu_present() -> bool:
    import shutil
    import subprocess
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="study spec (configs/study/*.yaml)")
    p.add_argument("--data-dir", default=None, help="data root ({root} in the spec; default: the spec's data.root)")
    p.add_argument("--out", default=None, help="output folder (default: work_dirs/study/<name>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and touch nothing")
    p.add_argument("--launcher", choices=["none", "torchrun"], default="none",
                   help="torchrun: distill.py under torchrun, transfer.py/test.py with --launcher pytorch")
    p.add_argument("--nproc", type=int, default=None, help="processes per torchrun job (default: GPUs, or 2)")
    p.add_argument("--profile", default="auto",
                   help="a profile of the spec (e.g. gpu); auto: 'gpu' when a GPU is present and the spec has one")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N independent jobs at once; on a cluster, use --executor slurm")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads of each job (default: this machine's cores / jobs); set for every job whatever "
                        "OMP_NUM_THREADS says, and recorded in its marker")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished runs, run nothing")
    p.add_argument("--quiet", action="store_true", help="keep the runs' output in the logs only")
    c = p.add_argument_group("cluster (docs/cluster.md)")
    c.add_argument("--executor", choices=["inline", "local", "slurm"], default="inline",
                   help="inline: run the jobs from this process (default); slurm: submit every job to Slurm at once "
                        "through submitit, with afterok dependencies, and return; local: submitit's local executor")
    c.add_argument("--status", action="store_true", help="one line per job: done, running, pending, failed or "
                   "not submitted, its Slurm job id and its log")
    c.add_argument("--cancel", action="store_true", help="cancel the study's queued and running jobs (scancel)")
    for flag, kind, what in (("--partition", str, "Slurm partition"), ("--account", str, "Slurm account"),
                             ("--qos", str, "Slurm quality of service"), ("--constraint", str, "node features"),
                             ("--nodes", int, "nodes per multi-process job"),
                             ("--gpus-per-node", int, "GPUs per node (one task per GPU)"),
                             ("--tasks-per-node", int, "CPU processes per node when a job has no GPUs"),
                             ("--cpus-per-task", int, "CPUs per task"), ("--mem-gb", float, "memory per node, GB"),
                             ("--timeout-min", int, "time limit of each job, minutes")):
        c.add_argument(flag, type=kind, default=None, help=f"{what} (default: the spec's slurm: section)")
    a = p.parse_args(argv)
    profile = a.profile
    if profile == "auto":
        import yaml
        raw = Path(a.spec)
        has_gpu_profile = raw.is_file() and "gpu" in ((yaml.safe_load(raw.read_text()) or {}).get("profiles") or {})
        profile = "gpu" if has_gpu_profile and not a.dry_run and _gpu_present() else "default"
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
    from study.runner import job_seconds, job_threads, run_all
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
            "cpus": os.cpu_count(), "gpu": _gpu_present(), "launcher": a.launcher,
            "commands": [j.command(a.launcher, nproc) for j in jobs]}
    return _report(out, spec, jobs, meta)


def _report(out: Path, spec: dict, jobs: list, meta: dict) -> dict:
    from study.report import write
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


def _on_executor(a, spec: dict, out: Path, jobs: list):
    """--executor local|slurm, --status, --cancel: the same jobs as submitit job objects (study/cluster.py)."""
    from study.cluster import Study, print_lines
    from study.resources import has_resources
    from study.runner import job_seconds, job_threads
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
            "cpus": os.cpu_count(), "gpu": _gpu_present(), "launcher": executor,
            "commands": commands}
    return _report(out, spec, jobs, meta)


if __name__ == "__main__":
    main()
