"""Faults in a real distributed run: a worker killed mid-run must end the whole torchrun job (no hang in a gloo
collective, no orphaned worker) with one line from the other rank naming the lost one, and --resume must continue
from the last completed epoch's last.pth; a rank that freezes (alive, silent) ends the run within --dist-timeout even
without torchrun to tear the job down."""
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT

EPOCHS = 6  # about 5 s an epoch for 2 CPU workers on 2 cores: the run lasts well over 20 s
EXIT_BOUND_S = 60


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc; psutil is not a dependency)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def env_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def workers_by_rank(torchrun_pid: int, n: int, timeout: float) -> dict[int, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ranks = {int(env_of(c)["RANK"]): c for c in children(torchrun_pid) if "RANK" in env_of(c)}
        if len(ranks) == n:
            return ranks
        time.sleep(0.2)
    raise AssertionError(f"torchrun {torchrun_pid} did not start {n} workers in {timeout} s")


@pytest.mark.slow
def test_killed_worker_ends_the_job_and_resume_finishes(shapes_small, tmp_path):
    out = tmp_path / "runs"
    logs = tmp_path / "ranks"  # each worker's stdout and stderr in its own file (torchrun --redirects)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--log-dir", str(logs), "--redirects", "3", "--tee", "3",
           "tools/distill.py", "--data-dir", str(shapes_small["classification"]), "--img-size", "32",
           "--batch-size", "8", "--workers", "0", "--warmup-epochs", "0", "--drop-path", "0", "--lr", "1e-3",
           "--progress", "log", "--log-interval", "100", "--model", "resnet18", "--epochs", str(EPOCHS),
           "--output", str(out), "--experiment", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last = out / "ddp" / "last.pth"
    log = open(tmp_path / "killed.log", "w")
    # own session: whatever happens, the finally below can end exactly this job's processes
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    workers: dict[int, int] = {}
    try:
        workers = workers_by_rank(proc.pid, 2, timeout=120)
        deadline = time.time() + 300
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), f"no epoch finished: {(tmp_path / 'killed.log').read_text()[-3000:]}"
        time.sleep(1.0)  # into the next epoch: rank 0 is inside a gradient all-reduce or about to be
        assert proc.poll() is None, "the run finished before a worker could be killed"
        os.kill(workers[1], signal.SIGKILL)
        t_kill = time.time()
        try:
            rc = proc.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"torchrun still running {EXIT_BOUND_S} s after a worker was SIGKILLed "
                                 f"(rank 0 alive: {alive(workers[0])}): the job hangs") from None
        took = time.time() - t_kill
        assert rc != 0, "torchrun reported success although a worker was killed"
        grace = time.time() + 10
        while alive(workers[0]) and time.time() < grace:
            time.sleep(0.1)
        assert not alive(workers[0]), "rank 0 outlived torchrun (orphaned, probably waiting in a collective)"
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in workers.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    print(f"torchrun exited rc={rc} {took:.1f} s after the kill")
    err = next(logs.glob("**/attempt_0/0/stderr.log")).read_text()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]  # rank 0's one line, naming the lost rank
    assert re.fullmatch(r"error: rank 1 of 2( \(last seen at epoch \d+ step \d+\))? was lost \(.+\); this is rank 0"
                        r".*; the last checkpoint .*last\.pth \(after epoch \d+\) is intact: continue with the same "
                        r"command and --resume", lines[0]), lines[0]

    done = torch.load(last, weights_only=True)["epoch"]  # intact: atomic writes survive the kill
    assert 1 <= done < EPOCHS
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"resumed from {last} at epoch {done}" in r.stdout
    rows = list(csv.DictReader(open(out / "ddp" / "metrics.csv")))
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))
    assert torch.load(last, weights_only=True)["epoch"] == EPOCHS
    summary = json.loads((out / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == EPOCHS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_frozen_rank_ends_the_run_within_dist_timeout_naming_it(shapes_small, tmp_path):
    """Two ranks started as Slurm tasks start them (env://, no torchrun agent to tear the job down): rank 1 is
    stopped (SIGSTOP: alive, silent, its sockets open, so gloo never fails), and rank 0, waiting in a collective,
    ends within --dist-timeout with one line naming rank 1 instead of waiting out gloo's 30 minutes."""
    timeout = 10
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2"}
    cmd = [sys.executable, "tools/distill.py", "--data-dir", str(shapes_small["classification"]), "--img-size", "32",
           "--batch-size", "8", "--workers", "0", "--warmup-epochs", "0", "--progress", "log", "--log-interval", "1",
           "--model", "resnet10t", "--epochs", "20", "--output", str(tmp_path), "--experiment", "frozen",
           "--dist-timeout", str(timeout)]
    procs, logs = [], []
    try:
        for rank in (0, 1):
            log = open(tmp_path / f"rank{rank}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=log, stderr=subprocess.PIPE, text=True, start_new_session=True))
        progress = tmp_path / "frozen" / "progress.jsonl"
        deadline = time.time() + 300
        while not (progress.is_file() and '"step": 2' in progress.read_text()):
            assert all(p.poll() is None for p in procs) and time.time() < deadline, procs[0].stderr.read()[-3000:]
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)
        t0 = time.time()
        try:
            procs[0].wait(timeout=timeout + 20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rank 0 still waits {timeout + 20} s after rank 1 froze") from None
        took = time.time() - t0
        err = procs[0].stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    print(f"rank 0 exited rc={procs[0].returncode} {took:.1f} s after rank 1 froze")
    assert procs[0].returncode == 2 and timeout <= took <= timeout + 20
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(rf"error: rank 1 of 2( \(last seen at epoch 1 step \d+\))? was lost \(no sign of life for "
                        rf"{timeout} s, --dist-timeout\); this is rank 0, at epoch 1 step \d+; no checkpoint was "
                        r"written yet: run the command again", lines[0]), lines[0]
