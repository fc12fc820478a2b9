#!/usr/bin/env python
"""Run one of the paper's studies as a grid of real runs, resumably, and report it.

    python tools/study.py configs/study/mini.yaml                    # both studies in miniature (make study)
    python tools/study.py configs/study/imagenet_data_scale.yaml --data-dir IMAGENET --dry-run
    python tools/study.py configs/study/imagenet_data_scale.yaml --data-dir IMAGENET --launcher torchrun --nproc 8

The spec expands into exactly the tools/make_shapes.py, tools/distill.py, tools/transfer.py and tools/test.py
commands a user would type (--dry-run prints them, one per line: paste them into a job array). Settings that
share data and the teacher train in one distill.py call (one teacher forward per batch). Finished runs are
skipped, interrupted ones continue with --resume, so a killed study is started again with the same command.
At the end: <out>/report.md, report.json, commands.txt and plots.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
                   help="run up to N independent jobs at once (each gets cpus/N threads); on a cluster, use --dry-run")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished runs, run nothing")
    p.add_argument("--quiet", action="store_true", help="keep the runs' output in the logs only")
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
    nproc = a.nproc or 2
    jobs = expand(spec, out, a.data_dir)
    if a.dry_run:
        for job in jobs:
            print(job.command(a.launcher, nproc))
        return None
    data = spec.get("data") or {}
    root = a.data_dir or data.get("root")
    if data.get("shapes") is None and not Path(str(root)).exists():  # the built-in world is generated instead
        raise UserError(f"data folder not found: {root} (give --data-dir)")
    from study.report import write
    from study.runner import job_seconds, run_all
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.txt").write_text("".join(j.command(a.launcher, nproc) + "\n" for j in jobs))
    t0 = time.time()
    status = {"ran": [], "skipped": [j.id for j in jobs], "seconds": {}}
    if not a.report_only:
        print(f"study {spec['name']} (profile {spec['profile']}): {len(jobs)} jobs -> {out}", flush=True)
        status = run_all(out, jobs, a.launcher, nproc, a.quiet, a.jobs)
    secs = job_seconds(out, jobs)
    meta = {"jobs": len(jobs), "ran": len(status["ran"]), "skipped": len(status["skipped"]),
            "seconds_total": round(sum(secs.values()), 1), "seconds_this_call": round(time.time() - t0, 1),
            "job_seconds": secs, "cpus": os.cpu_count(), "gpu": _gpu_present(), "launcher": a.launcher,
            "commands": [j.command(a.launcher, nproc) for j in jobs]}
    rep = write(out, spec, jobs, meta)
    for c in rep["claims"]:
        print(f"- {c['verdict']}: {c['text']}")
    print(f"report: {out / 'report.md'}")
    return rep


if __name__ == "__main__":
    main()
