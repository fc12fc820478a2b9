#!/usr/bin/env python
"""Stand-ins for Slurm's sbatch, srun, squeue, sacct, scancel and scontrol, for the tests, on one machine.

``fake_slurm.py COMMAND ARGS`` behaves like COMMAND as submitit and tools/study.py use it. The state lives in
$FAKE_SLURM_DIR: ``jobs/<id>.json`` per job and ``scripts/<id>.sh``, a copy of every script sbatch received
(as submitit's own tests record them). sbatch parses the #SBATCH lines, refuses partitions and accounts not
listed in $FAKE_SLURM_PARTITIONS / $FAKE_SLURM_ACCOUNTS (with Slurm's messages), and starts a detached runner
that waits for the job's ``afterok`` dependencies (cancelling the job when one failed and
``--kill-on-invalid-dep=yes``), then runs the script with Slurm's variables, at most $FAKE_SLURM_MAX_RUNNING
jobs at a time (default 1). srun starts one process (group) per task with SLURM_PROCID/LOCALID/NODEID.
``scancel --signal SIG ID`` signals every task's process group, as Slurm signals a job's steps; ``scontrol
requeue ID`` ends the job and runs it again with the same id (SLURM_RESTART_COUNT + 1). While the file
``$FAKE_SLURM_DIR/hold`` exists, jobs stay pending.
"""
import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_DIR", "/nonexistent"))
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


@contextlib.contextmanager
def locked():
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _path(jid) -> Path:
    return STATE / "jobs" / f"{jid}.json"


def load(jid) -> dict:
    return json.loads(_path(jid).read_text())


def save(job: dict) -> None:
    p = _path(job["id"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1))
    os.replace(tmp, p)


def update(jid, **kw) -> dict:
    with locked():
        job = load(jid)
        job.update(kw)
        save(job)
        return job


def all_jobs() -> list[dict]:
    d = STATE / "jobs"
    return sorted((json.loads(p.read_text()) for p in d.glob("*.json")), key=lambda j: int(j["id"])) \
        if d.is_dir() else []


def _options(lines: list[str]) -> dict:
    """['--nodes=2', '--exclusive', '--output', 'x'] -> {'nodes': '2', 'exclusive': True, 'output': 'x'}."""
    out, i = {}, 0
    while i < len(lines):
        a = lines[i]
        if a.startswith("--"):
            k, eq, v = a[2:].partition("=")
            if eq:
                out[k] = v
            elif i + 1 < len(lines) and not lines[i + 1].startswith("-"):
                out[k], i = lines[i + 1], i + 1
            else:
                out[k] = True
        i += 1
    return out


def sbatch(argv: list[str]) -> int:
    script = Path(argv[-1])
    text = script.read_text()
    params = _options([t for ln in text.splitlines() if ln.startswith("#SBATCH ") for t in shlex.split(ln[8:])])
    params.update(_options(argv[:-1]))
    for key, env, what in (("partition", "FAKE_SLURM_PARTITIONS", "Invalid partition name specified"),
                           ("account", "FAKE_SLURM_ACCOUNTS", "Invalid account or account/partition combination "
                                                              "specified")):
        allowed = os.environ.get(env)
        if key in params and allowed is not None and params[key] not in allowed.split(","):
            print(f"sbatch: error: Batch job submission failed: {what}", file=sys.stderr)
            return 1
    deps = []
    if params.get("dependency"):
        kind, _, ids = params["dependency"].partition(":")
        deps = ids.split(":") if kind == "afterok" else []
        if kind != "afterok" or any(not _path(d).exists() for d in deps):
            print("sbatch: error: Batch job submission failed: Job dependency problem", file=sys.stderr)
            return 1
    with locked():
        counter = STATE / "next_id"
        jid = int(counter.read_text()) if counter.exists() else 1001
        counter.write_text(str(jid + 1))
        (STATE / "scripts").mkdir(exist_ok=True)
        (STATE / "scripts" / f"{jid}.sh").write_text(text)
        save({"id": str(jid), "name": params.get("job-name", "sbatch"), "params": params, "after": deps,
              "state": "PENDING", "reason": "Dependency" if deps else "None", "restarts": 0, "exit_code": None,
              "cwd": os.getcwd(), "task_pgids": [], "batch_pgid": None, "requeue": False})
    subprocess.Popen([sys.executable, __file__, "_run", str(jid)], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {jid}")
    return 0


def _signal_groups(job: dict, sig: int) -> None:
    for pg in [*job.get("task_pgids", []), *([job["batch_pgid"]] if job.get("batch_pgid") else [])]:
        with contextlib.suppress(OSError):
            os.killpg(pg, sig)


def _slot():
    """Hold one of $FAKE_SLURM_MAX_RUNNING run slots (a file lock) until the job ends."""
    n = int(os.environ.get("FAKE_SLURM_MAX_RUNNING", "1"))
    while True:
        for k in range(n):
            f = open(STATE / f"slot{k}", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except OSError:
                f.close()
        time.sleep(0.2)


def run(jid: str) -> int:
    while True:  # pending: on hold, or waiting for the jobs it depends on
        job = load(jid)
        if job["state"] == "CANCELLED":
            return 0
        states = [load(d)["state"] for d in job["after"]]
        if any(s in FINAL and s != "COMPLETED" for s in states):
            if job["params"].get("kill-on-invalid-dep") == "yes":
                update(jid, state="CANCELLED", reason="DependencyNeverSatisfied")
                return 0
            update(jid, reason="DependencyNeverSatisfied")
        elif all(s == "COMPLETED" for s in states) and not (STATE / "hold").exists():
            break
        time.sleep(0.2)
    slot = _slot()
    p = job["params"]
    nodes = int(p.get("nodes", 1))
    per_node = int(p.get("ntasks-per-node", 1))
    while True:
        with locked():
            job = load(jid)
            if job["state"] == "CANCELLED":
                return 0
            job.update(state="RUNNING", reason="None", task_pgids=[])
            save(job)
        env = {**os.environ, "SLURM_JOB_ID": jid, "SLURM_JOBID": jid, "SLURM_JOB_NAME": job["name"],
               "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "localhost",
               "SLURM_NODELIST": "localhost", "SLURM_NTASKS": str(nodes * per_node),
               "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_CPUS_PER_TASK": str(p.get("cpus-per-task", 1)),
               "SLURM_RESTART_COUNT": str(job["restarts"]), "SLURM_SUBMIT_DIR": job["cwd"]}
        stdout = str(p.get("output", os.devnull)).replace("%j", jid).replace("%t", "0")
        stderr = str(p.get("error", stdout)).replace("%j", jid).replace("%t", "0")
        Path(stdout).parent.mkdir(parents=True, exist_ok=True)
        with open(stdout, "a") as fo, open(stderr, "a") as fe:
            proc = subprocess.Popen(["bash", str(STATE / "scripts" / f"{jid}.sh")], stdout=fo, stderr=fe, env=env,
                                    cwd=job["cwd"], start_new_session=True)
            update(jid, batch_pgid=proc.pid)
            ended_at = None
            while True:
                rc = proc.poll()
                job = load(jid)
                if job["requeue"] or job["state"] == "CANCELLED":
                    ended_at = ended_at or time.time()  # the job ends now, its processes soon after
                    if rc is not None or time.time() - ended_at > 5:
                        _signal_groups(job, signal.SIGKILL)
                        proc.wait()
                        break
                elif rc is not None:
                    break
                time.sleep(0.1)
        job = load(jid)
        if job["state"] == "CANCELLED":
            return 0
        if job["requeue"]:
            update(jid, requeue=False, restarts=job["restarts"] + 1, state="PENDING", reason="BeginTime")
            continue
        update(jid, state="COMPLETED" if proc.returncode == 0 else "FAILED", exit_code=proc.returncode)
        slot.close()
        return 0


def srun(argv: list[str]) -> int:
    i, opts = 0, {}
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a in ("--output", "--error", "-o", "-e", "-n", "--ntasks"):
            opts[a.lstrip("-")[0] if len(a) == 2 else a[2:]], i = argv[i + 1], i + 2
            continue
        k, eq, v = a[2:].partition("=")
        if eq:
            opts[k] = v
        i += 1
    cmd = argv[i:]
    jid = os.environ["SLURM_JOB_ID"]
    ntasks = int(opts.get("ntasks", opts.get("n", os.environ.get("SLURM_NTASKS", "1"))))
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", ntasks))
    procs = []
    for t in range(ntasks):
        env = {**os.environ, "SLURM_PROCID": str(t), "SLURM_LOCALID": str(t % per_node),
               "SLURM_NODEID": str(t // per_node), "SLURM_NTASKS": str(ntasks), "SLURM_STEP_ID": "0",
               "SLURM_STEPID": "0"}
        out = opts.get("output", opts.get("o"))
        err = opts.get("error", opts.get("e", out))
        fo = open(out.replace("%j", jid).replace("%t", str(t)), "a") if out else None
        fe = open(err.replace("%j", jid).replace("%t", str(t)), "a") if err else None
        procs.append(subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe, start_new_session=True))
    with locked():
        job = load(jid)
        job["task_pgids"] = [p.pid for p in procs]
        save(job)
    codes = [p.wait() for p in procs]
    bad = [c for c in codes if c != 0]
    return (bad[0] if bad[0] > 0 else 128 - bad[0]) if bad else 0


def scancel(argv: list[str]) -> int:
    sig, ids, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("--signal", "-s"):
            sig, i = argv[i + 1], i + 1
        elif a.startswith("--signal="):
            sig = a.split("=", 1)[1]
        elif not a.startswith("-"):
            ids.append(a)
        i += 1
    for jid in ids:
        if not _path(jid).exists():
            print(f"scancel: error: Kill job error on job id {jid}: Invalid job id specified", file=sys.stderr)
            return 1
        job = load(jid)
        if sig is not None:
            name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
            if job["state"] == "RUNNING":
                _signal_groups({"task_pgids": job["task_pgids"], "batch_pgid": None}, getattr(signal, name))
        elif job["state"] not in FINAL:
            update(jid, state="CANCELLED", reason="None")
    return 0


def _field(job: dict, name: str) -> str:
    return {"jobid": job["id"], "state": job["state"], "nodelist": "localhost", "jobname": job["name"],
            "exitcode": f"{job['exit_code'] or 0}:0", "reason": job["reason"],
            "restarts": str(job["restarts"])}.get(name.lower(), "")


def squeue(argv: list[str]) -> int:
    opts = _options([a for a in argv])
    fmt = opts.get("format", "%.18i %.9P %.30j %.8T")
    if "-o" in argv:
        fmt = argv[argv.index("-o") + 1]
    ids = set(str(opts.get("jobs", "")).split(",")) - {""}
    if not ("--noheader" in argv or "-h" in argv):
        print("JOBID|STATE")
    for job in all_jobs():
        if job["state"] in FINAL or (ids and job["id"] not in ids):
            continue
        line = re.sub(r"%\.?\d*([a-zA-Z])", lambda m: {"i": job["id"], "T": job["state"], "j": job["name"],
                                                       "r": job["reason"]}.get(m.group(1), ""), fmt)
        print(line)
    return 0


def sacct(argv: list[str]) -> int:
    fields, ids, header, i = ["JobID", "JobName", "State", "ExitCode"], [], True, 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "--format", "-j", "--jobs"):
            val, i = argv[i + 1], i + 1
        elif a.startswith(("--format=", "--jobs=")):
            val = a.split("=", 1)[1]
        else:
            header = header and a not in ("-n", "--noheader")
            i += 1
            continue
        if a.startswith(("-o", "--format")):
            fields = val.split(",")
        else:
            ids += val.split(",")
        i += 1
    if header:
        print("|".join(fields))
    for job in all_jobs():
        if not ids or job["id"] in ids:
            print("|".join(_field(job, f) for f in fields))
    return 0


def scontrol(argv: list[str]) -> int:
    if argv[:1] == ["requeue"]:
        for jid in argv[1].split(","):
            update(jid, requeue=True, state="REQUEUED")
        return 0
    if argv[:1] == ["show"] and argv[1:2] and argv[1].startswith("hostname"):
        print("\n".join((argv[2] if len(argv) > 2 else "localhost").split(",")))
        return 0
    print(f"scontrol: error: unsupported here: {' '.join(argv)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    name, args = sys.argv[1], sys.argv[2:]
    if name == "_run":
        sys.exit(run(args[0]))
    sys.exit({"sbatch": sbatch, "srun": srun, "squeue": squeue, "sacct": sacct, "scancel": scancel,
              "scontrol": scontrol}[name](args))
