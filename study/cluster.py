"""A study's jobs through submitit: all at once to Slurm (with afterok dependencies), or on this machine.

``--executor slurm`` submits one Slurm job per unfinished study job, each depending (afterok) on the jobs whose
outputs it reads, and a last job that writes the report once all of them succeeded; the command returns once
everything is queued. A job that fails only takes down the jobs that read its outputs (Slurm cancels them:
kill-on-invalid-dep). Running the same command again submits what is neither finished nor queued.
``--executor local`` runs the same job objects with submitit's local executor, in dependency order.
"""
from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import submitit

from common.environment import threads_for
from common.io import UserError

from . import slurm
from .resources import Resources, job_resources
from .runner import ROOT, log_path, marker_matches, marker_path
from .spec import Job
from .task import StudyTask

ACTIVE_WORDS = {"RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running"}


class Study:
    """The jobs of one study on a submitit executor ('slurm' or 'local')."""

    def __init__(self, out: Path, spec: dict, jobs: list[Job], executor: str, overrides: dict | None = None,
                 report_job: Job | None = None, parallel: int = 1, threads: int | None = None):
        self.out, self.spec, self.jobs, self.executor = out, spec, list(jobs), executor
        self.report_job, self.parallel, self.threads = report_job, parallel, threads
        self.res: dict[str, Resources] = {j.id: job_resources(spec, j.kind, j.distributed, overrides) for j in jobs}
        if report_job is not None:
            self.res[report_job.id] = job_resources(spec, "report", False, overrides)

    def command(self, job: Job) -> str:
        """What the job's marker records: the tool's command, behind srun when it runs several tasks."""
        return job.command("slurm", self.res[job.id].ntasks)

    def done(self, job: Job, command: str | None = None) -> bool:
        """Finished with this command (default: the one it would be submitted with now); the report also
        after the last job that finished."""
        if not marker_matches(self.out, job, command or self.command(job)):
            return False
        if job is self.report_job:
            stamps = [marker_path(self.out, j).stat().st_mtime for j in self.jobs if marker_path(self.out, j).is_file()]
            return marker_path(self.out, job).stat().st_mtime >= max(stamps, default=0)
        return True

    def _executor(self, job: Job, after: list[str]) -> submitit.AutoExecutor:
        res = self.res[job.id]
        folder = self.out / "slurm" / "logs" / "%j"
        if self.executor == "slurm":
            ex = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=res.max_timeouts)
            extra = {"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"} if after else {}
            # the job unpickles study.task from this checkout, whatever the cluster's default environment
            setup = [f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"]
            ex.update_parameters(slurm_additional_parameters=extra, slurm_setup=setup)
        else:
            ex = submitit.AutoExecutor(folder, cluster="local")
            res = Resources(nodes=1, gpus_per_node=res.gpus_per_node, tasks_per_node=res.tasks_per_node,
                            timeout_min=res.timeout_min)
        ex.update_parameters(name=f"{self.spec['name']}:{job.id}", **res.executor_params())
        return ex

    def _submit(self, job: Job, after: list[str], threads: int | None = None):
        task = StudyTask(self.out, job, self.res[job.id].ntasks, self.command(job), threads)
        ex = self._executor(job, after)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):  # submitit echoes sbatch's stderr; one line is enough
                sj = ex.submit(task)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
            lines = [ln.strip() for ln in (str(e) + "\n" + err.getvalue()).splitlines() if ln.strip()]
            msg = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "no message")
            raise UserError(f"sbatch refused study job {job.id}: {msg}") from None
        rec = {"id": job.id, "executor": self.executor, "slurm_id": str(sj.job_id), "after": after,
               "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": self.command(job),
               "resources": self.res[job.id].describe(), "log": str(log_path(self.out, job)),
               "submitit_log": str(sj.paths.stdout)}
        slurm.write_record(self.out, job.id, rec)
        return sj

    def all_jobs(self) -> list[Job]:
        return self.jobs + ([self.report_job] if self.report_job is not None else [])

    def states(self) -> dict[str, str]:
        """Study job id -> Slurm state of its recorded submission ('' when unknown or never submitted)."""
        recs = {j.id: slurm.read_record(self.out, j.id) for j in self.all_jobs()}
        ids = [r["slurm_id"] for r in recs.values() if r and r.get("executor") == "slurm"]
        sl = slurm.slurm_states(ids) if ids else {}
        out = {}
        for jid, r in recs.items():
            if not r:
                out[jid] = ""
            elif r.get("executor") == "local":
                out[jid] = "RUNNING" if slurm.local_alive(r["slurm_id"]) else "FAILED"  # done jobs have markers
            else:
                out[jid] = sl.get(r["slurm_id"], "")
        return out

    def submit_slurm(self) -> list[str]:
        """Submit every unfinished job that is not queued already; returns the ids submitted."""
        slurm.require_slurm()
        states = self.states()
        ids: dict[str, str] = {}  # study job -> Slurm job that will write its outputs
        submitted = []
        for job in self.jobs:
            if self.done(job):
                continue
            rec = slurm.read_record(self.out, job.id)
            if rec and slurm.queued(states[job.id]):
                ids[job.id] = rec["slurm_id"]
                print(f"{job.id}: already {states[job.id].lower()} (Slurm job {rec['slurm_id']})", flush=True)
                continue
            after = [ids[d] for d in job.after if d in ids]  # finished producers need no dependency
            sj = self._submit(job, after, self.threads)
            ids[job.id] = str(sj.job_id)
            submitted.append(job.id)
            dep = f" after {', '.join(after)}" if after else ""
            print(f"{job.id}: submitted as Slurm job {sj.job_id}{dep} ({self.res[job.id].describe()})", flush=True)
        rj = self.report_job
        if rj is not None and (submitted or not self.done(rj)):
            rec = slurm.read_record(self.out, rj.id)
            if not submitted and rec and slurm.queued(states[rj.id]):
                print(f"report: already {states[rj.id].lower()} (Slurm job {rec['slurm_id']})", flush=True)
            else:
                sj = self._submit(rj, sorted(set(ids.values()), key=int))
                submitted.append(rj.id)
                print(f"report: submitted as Slurm job {sj.job_id}, after all of the above", flush=True)
        if not submitted:
            print("nothing to submit: every job is finished or queued", flush=True)
        return submitted

    def run_local(self) -> dict:
        """Run the unfinished jobs with submitit's local executor, ``parallel`` at a time, in dependency order.
        A failed job stops only the jobs that read its outputs; the others still run."""
        done = {j.id for j in self.jobs if self.done(j)}
        skipped = sorted(done)
        waiting = [j for j in self.jobs if j.id not in done]
        running: dict[str, object] = {}
        failed: dict[str, str] = {}
        ran, seconds = [], {}
        threads = threads_for(self.parallel, self.threads)  # this machine's cores shared between the jobs
        while waiting or running:
            for job in [j for j in waiting if any(d in failed for d in j.after)]:
                waiting.remove(job)
                failed[job.id] = f"not run: it reads the outputs of {', '.join(d for d in job.after if d in failed)}"
            for job in [j for j in waiting if all(d in done for d in j.after)]:
                if len(running) >= self.parallel:
                    break
                waiting.remove(job)
                running[job.id] = self._submit(job, [], threads)
                print(f"{job.id}: started (local job {running[job.id].job_id})", flush=True)
            if not running:
                break
            time.sleep(0.5)
            for jid, sj in list(running.items()):
                if not sj.done():
                    continue
                del running[jid]
                try:
                    seconds[jid] = sj.results()[0]["seconds"]  # one result per task; rank 0's
                except Exception as e:  # the job's own exception, as text
                    lines = [ln for ln in str(e).splitlines() if "study job" in ln] or str(e).splitlines()[-1:]
                    failed[jid] = lines[-1].split("JobFailed: ")[-1] if lines else "failed"
                    print(f"{jid}: FAILED: {failed[jid]}", flush=True)
                    continue
                done.add(jid)
                ran.append(jid)
                print(f"{jid}: done in {seconds[jid]:.0f} s", flush=True)
        if failed:
            first = next(iter(failed.items()))
            raise UserError(f"{len(failed)} study job(s) did not finish; {first[0]}: {first[1]}")
        return {"ran": ran, "skipped": skipped, "seconds": seconds}

    def status_lines(self) -> list[str]:
        states = self.states()
        lines = []
        for job in self.all_jobs():
            rec = slurm.read_record(self.out, job.id) or {}
            state = states.get(job.id, "")
            if self.done(job) or (rec and self.done(job, rec.get("command"))):
                word = "done"  # also with the command it was submitted with (flags may differ now)
            elif not rec:
                word = "not submitted"
            elif slurm.queued(state):
                word = ACTIVE_WORDS.get(state, "pending" if state in ("PENDING", "REQUEUED") else state.lower())
            else:  # ended without its marker (COMPLETED: exited 0 but its outputs are gone)
                word = "failed"
            sid = rec.get("slurm_id", "-")
            log = rec.get("log") or str(log_path(self.out, job))
            where = f"{rec['executor']} {sid}" if rec else "-"
            lines.append(f"{word:<14} {job.id:<46} {where:>16} {state or '-':<13} {log}")
        return lines

    def cancel(self) -> list[str]:
        states = self.states()
        sl, loc = [], []
        for job in self.all_jobs():
            rec = slurm.read_record(self.out, job.id)
            if not rec or not slurm.queued(states[job.id]):
                continue
            (sl if rec.get("executor") == "slurm" else loc).append(rec["slurm_id"])
        slurm.cancel(sl)
        slurm.cancel_local(loc)
        return sl + loc


def print_lines(lines: list[str]) -> None:
    sys.stdout.write("".join(ln + "\n" for ln in lines))
    sys.stdout.flush()
