"""One study job as a submitit job object: runs the tool's command in each Slurm (or local) task, and comes
back with ``--resume`` when it is preempted or reaches its time limit.

Every task runs the job's command as a child process. With several tasks, each child gets torch's env://
variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) from submitit's JobEnvironment, as the
field's ``run_with_submitit.py`` scripts set them, so distill.py's DDP set-up works unchanged; detection runs
with mmengine's ``--launcher slurm``, which reads Slurm's own variables. The child ignores the preemption
signal (submitit's, USR2 by default): the task's submitit handler catches it, calls ``checkpoint()`` (which
stops the child with SIGTERM) and requeues the job. On SIGTERM (from ``checkpoint()``, or from Slurm itself, which
signals every process of a preempted job) the tools finish the step under way, save it and exit with 128 + 15:
distill.py's ``last.pth`` then holds that very step, so a preempted distillation loses at most a step; detection
continues from mmengine's ``last_checkpoint``. The requeued job continues with ``--resume``. Rank 0 writes the
job's marker once the command exited 0.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import submitit

from common.jobs import Running, check, tool_argv

from .runner import finish_job, log_path
from .spec import Job

# after the child was ended by a signal (preemption sends SIGTERM to every process of the job, then the requeue
# signal), this long is left for submitit's handler to requeue before the job counts as failed
SIGNAL_GRACE_S = float(os.environ.get("VANILLAKD_SIGNAL_GRACE_S", "120"))
# what a tool exits with after it stopped on SIGTERM or SIGINT and saved where it was (common.errors.Stopped)
STOPPED_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)


def _ignore_requeue_signal() -> None:  # runs in the child, before exec: the ignored disposition is inherited
    signal.signal(submitit.JobEnvironment._usr_sig(), signal.SIG_IGN)


def torch_env(env: submitit.JobEnvironment) -> dict[str, str]:
    """torch's env:// variables for this task (submitit's TorchDistributedEnvironment, without touching
    CUDA_VISIBLE_DEVICES: distill.py picks its GPU by LOCAL_RANK)."""
    dist = submitit.helpers.TorchDistributedEnvironment()
    return {"MASTER_ADDR": dist.master_addr, "MASTER_PORT": str(dist.master_port), "RANK": str(dist.rank),
            "WORLD_SIZE": str(dist.world_size), "LOCAL_RANK": str(dist.local_rank),
            "LOCAL_WORLD_SIZE": str(dist.local_world_size)}


class StudyTask(submitit.helpers.Checkpointable):
    """Run study job ``job`` with ``ntasks`` processes; ``command`` is what its marker records."""

    def __init__(self, out: Path, job: Job, ntasks: int, command: str, threads: int | None = None,
                 resume: bool = False) -> None:
        self.out, self.job, self.ntasks, self.command = Path(out), job, ntasks, command
        self.threads, self.resume = threads, resume
        self._running: Running | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_running"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _running=None)

    def argv(self) -> list[str]:
        argv = tool_argv(self.job.argv("slurm", self.ntasks, python=sys.executable))
        if self.job.resume_if is not None and self.job.resume_if.exists():
            argv.append("--resume")  # never from scratch once a checkpoint exists
        return argv

    def __call__(self) -> dict:
        env = submitit.JobEnvironment()
        rank = env.global_rank
        extra = torch_env(env) if self.ntasks > 1 else {}
        # set, never inherited: --threads / the local executor's share of the cores, else Slurm's CPUs per task
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        if threads is None and self.ntasks > 1:
            threads = 1  # several tasks share a node without a CPU count: torchrun's default
        log = log_path(self.out, self.job)
        if rank:
            log = log.with_suffix(f".rank{rank}.log")
        argv = self.argv()
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        header = (f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] {env.cluster} job {env.job_id} task {rank}/{self.ntasks}"
                  f", restart {restarts}, threads {threads}\n$ {' '.join(argv)}\n")
        self._running = Running(argv, log, threads=threads, env=extra, header=header,
                                preexec_fn=_ignore_requeue_signal)
        while self._running.poll() is None:  # polling keeps the requeue handler free to stop the child
            time.sleep(0.5)
        result = self._running.wait()
        if result.returncode < 0 or result.returncode in STOPPED_CODES:  # ended by a signal: a preemption's
            # requeue signal may be on its way
            deadline = time.time() + SIGNAL_GRACE_S
            while time.time() < deadline:
                time.sleep(0.5)
        check(result, self.job.id, label="study job")
        if rank == 0:
            finish_job(self.out, self.job, self.command, result.seconds, log, threads)
        return {"id": self.job.id, "seconds": round(result.seconds, 1)}

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Preempted or out of time: stop the command (SIGTERM: it saves the step under way within 30 s; SIGKILL
        after 60 s, and its checkpoints are written atomically) and come back as the same job with --resume (added
        when the job's checkpoint exists)."""
        if self._running is not None:
            self._running.stop(grace=60)
        again = StudyTask(self.out, self.job, self.ntasks, self.command, self.threads, resume=True)
        return submitit.helpers.DelayedSubmission(again)
