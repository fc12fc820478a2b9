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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402
from study.cli import run_study  # noqa: E402


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
    return run_study(a)


if __name__ == "__main__":
    main()
