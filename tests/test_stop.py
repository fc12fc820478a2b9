"""SIGTERM and SIGINT in a real run: the step under way finishes, a checkpoint of exactly that step is written, the
process ends within Slurm's 30 s grace with one line saying how to continue, and --resume ends with the student an
uninterrupted run ends with (CPU, no loader workers: to the last bit). Under torchrun every rank stops after the same
step. tools/transfer.py stops after the iteration under way."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import DISTILL_BASE, NO_WORKERS, R18_DET_CFG, ROOT

GRACE_S = 30  # Slurm's default KillWait, torchrun's and Kubernetes' default grace


def wait_for_step(progress: Path, proc: subprocess.Popen, epoch: int, step: int, timeout: float = 300) -> None:
    """Until progress.jsonl (rank 0's log, one record per step with --log-interval 1) shows ``step`` of ``epoch``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before epoch {epoch} step {step}"
        if progress.is_file():
            recs = [json.loads(ln) for ln in progress.read_text().splitlines() if ln.strip()]
            if any(r.get("epoch") == epoch and r.get("step", 0) >= step for r in recs):
                return
        time.sleep(0.02)
    raise AssertionError(f"no epoch {epoch} step {step} in {progress} after {timeout} s")


def start(argv: list[str], env: dict, log: Path, merged: bool = False) -> subprocess.Popen:
    """A tool in its own process group, its output in LOG.out and LOG.err (or both in LOG.out): files, not pipes,
    which a chatty tool could fill while the test waits."""
    with open(f"{log}.out", "w") as o, open(f"{log}.err", "w") as e:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=o, stderr=subprocess.STDOUT if merged else e,
                                start_new_session=True)


def stop_and_wait(proc: subprocess.Popen, sig: int = signal.SIGTERM, group: bool = False) -> float:
    """Send ``sig`` (to the process group with ``group``: a terminal's Ctrl-C, Slurm's signal to every process) and
    return the seconds until the process exited."""
    t0 = time.time()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"still running {GRACE_S} s after {signal.Signals(sig).name}") from None
    return time.time() - t0


def same_students(a: Path, b: Path, names=("student.pth", "student_ema.pth")) -> None:
    for name in names:
        x, y = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
        assert x.keys() == y.keys()
        worst = max((x[k].float() - y[k].float()).abs().max().item() for k in x)
        assert worst <= 1e-6, (name, worst)


def metrics(run: Path) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["val_top1"], r["ema_top1"]) for r in csv.DictReader(open(run / "metrics.csv"))]


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_the_step_and_resume_ends_with_the_same_student(shapes_small, teacher_ckpt,
                                                                                 tmp_path):
    """KD from a teacher with batch mixup/cutmix (numpy's RNG in the loop), RandAugment, EMA: everything a step
    changes must come back."""
    args = [sys.executable, "tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE,
            "--log-interval", "1", "--model", "resnet10t", "--teacher", "resnet18", "--teacher-checkpoint",
            str(teacher_ckpt), "--kd-loss", "kd", "--epochs", "2", "--mixup", "0.2", "--cutmix", "1.0", "--aa",
            "rand-m7-mstd0.5", "--model-ema", "--model-ema-decay", "0.9", "--output", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(args + ["--experiment", "ref"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = start(args + ["--experiment", "cut"], env, tmp_path / "cut")
    wait_for_step(cut / "progress.jsonl", proc, epoch=2, step=2)
    took = stop_and_wait(proc, signal.SIGTERM)
    stderr = (tmp_path / "cut.err").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    line = one_line(stderr)
    state = torch.load(cut / "last.pth", weights_only=True)
    step, n = state["step"], 12  # 96 images, batch 8
    assert state["version"] == 2 and state["epoch"] == 1 and 2 <= step < n, (state["epoch"], step)
    assert line == (f"stopped by SIGTERM after epoch 2, step {step} of {n}: saved {cut / 'last.pth'}; continue with "
                    "the same command and --resume")
    assert not list(cut.glob(".*.tmp")), "a temporary file was left"
    print(f"exit {took:.2f} s after SIGTERM, at epoch 2 step {step}")

    r = subprocess.run(args + ["--experiment", "cut", "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {cut / 'last.pth'} at epoch 1 + step {step} of {n}" in r.stdout
    same_students(tmp_path / "ref", cut)
    assert metrics(tmp_path / "ref") == metrics(cut)  # the interrupted epoch's mean loss too


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_both_ranks_after_one_step_and_resumes_exactly(shapes_small, teacher_ckpt,
                                                                                     tmp_path):
    """SIGTERM to torchrun, as Slurm or a Ctrl-C gives it: torchrun passes it on to both workers, which agree on the
    step (an all-reduce after each one), rank 0 writes last.pth with both ranks' RNG states, and both exit. The
    teacher's recording (--record-teacher) keeps the rows of the interrupted epoch's first steps."""
    args = [*TORCHRUN, "tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE,
            "--log-interval", "1", "--model", "resnet10t", "--teacher", "resnet18", "--teacher-checkpoint",
            str(teacher_ckpt), "--epochs", "2", "--mixup", "0.2", "--cutmix", "1.0", "--mixup-mode", "sample",
            "--model-ema", "--model-ema-decay", "0.9", "--output", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(args + ["--experiment", "ref", "--record-teacher", str(tmp_path / "rec_ref")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cut = tmp_path / "cut"
    args += ["--record-teacher", str(tmp_path / "rec_cut")]
    proc = start(args + ["--experiment", "cut"], env, tmp_path / "cut", merged=True)
    wait_for_step(cut / "progress.jsonl", proc, epoch=2, step=1)
    took = stop_and_wait(proc, signal.SIGTERM)
    out = (tmp_path / "cut.out").read_text()
    assert proc.returncode != 0, out[-3000:]
    state = torch.load(cut / "last.pth", weights_only=True)
    step = state["step"]
    assert state["epoch"] == 1 and 1 <= step < 6 and state["world_size"] == 2, out[-3000:]
    assert [r["position"] for r in state["rng"]] == [[1, step], [1, step]]  # both ranks, the same step
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # each rank's own RNG states
    stopped = [ln for ln in out.splitlines() if "stopped by SIGTERM" in ln]
    assert stopped == [f"stopped by SIGTERM after epoch 2, step {step} of 6: saved {cut / 'last.pth'}; continue "
                       "with the same command and --resume"], out[-3000:]
    print(f"torchrun exited {took:.2f} s after SIGTERM, both ranks at epoch 2 step {step}")

    r = subprocess.run(args + ["--experiment", "cut", "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at epoch 1 + step {step} of 6" in r.stdout
    same_students(tmp_path / "ref", cut)
    recorded = sorted(p.name for p in (tmp_path / "rec_ref").glob("epoch_*.npy"))
    assert len(recorded) == 6 and sorted(p.name for p in (tmp_path / "rec_cut").glob("*.npy")) == recorded
    for name in recorded:
        assert (tmp_path / "rec_ref" / name).read_bytes() == (tmp_path / "rec_cut" / name).read_bytes(), name


@pytest.mark.slow
def test_transfer_stops_after_the_iteration_under_way(shapes_small, tmp_path):
    """mmengine's epoch-based loop resumes only from an epoch's end: SIGINT to the whole process group (a terminal's
    Ctrl-C, loader workers included) stops after the iteration and says what --resume continues from."""
    from helpers_models import nontrivial
    student = tmp_path / "student.pth"
    torch.save(nontrivial("resnet18", num_classes=5).state_dict(), student)
    wd = tmp_path / "det"
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, "tools/transfer.py", R18_DET_CFG, "--checkpoint", str(student), "--data-root",
             str(shapes_small["coco"]), "--work-dir", str(wd), "--cfg-options", "train_cfg.max_epochs=2",
             "default_hooks.logger.interval=1", *NO_WORKERS],
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=o, stderr=e, start_new_session=True)
    deadline = time.time() + 600
    while "[1][2/" not in out.read_text().replace(" ", ""):  # mmengine's log: "Epoch(train) [1][2/6] ..."
        assert proc.poll() is None and time.time() < deadline, err.read_text()[-3000:]
        time.sleep(0.1)
    took = stop_and_wait(proc, signal.SIGINT, group=True)
    stderr = err.read_text()
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("stopped by")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith("stopped by SIGINT in epoch 1 after iteration ") and lines[0].endswith(
        "mmengine's epoch-based loop resumes only from an epoch's end: no checkpoint was written yet: run the "
        "command again"), lines[0]
    print(f"transfer exited {took:.2f} s after SIGINT")


def test_a_resumed_epoch_skips_this_ranks_first_positions():
    """EpochSampler(start=): the same keys as the full epoch from there on; the next epoch starts from its start."""
    from distill.replay import EpochSampler
    s = EpochSampler(50, rank=1, world_size=2, seed=0, limit=20)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=8)
    assert list(s) == full[8:] and len(s) == 12
    s.set_epoch(4)
    assert len(list(s)) == len(s) == 20


def test_a_mid_epoch_checkpoint_resumes_only_with_its_layout():
    """Each rank's next batch and RNG states depend on the world size and batch size it stopped with."""
    import argparse

    from common.io import UserError
    from distill.run_state import Position, _check_mid_epoch
    state, path, pos = {"world_size": 2, "args": {"batch_size": 8}}, Path("run/last.pth"), Position(1, 3)
    _check_mid_epoch(path, state, pos, argparse.Namespace(batch_size=8), 2, 6)
    with pytest.raises(UserError, match=r"stopped in epoch 2 after step 3 with 2 process\(es\); resume it with 2 "):
        _check_mid_epoch(path, state, pos, argparse.Namespace(batch_size=8), 1, 12)
    with pytest.raises(UserError, match="with --batch-size 8; resume it with the same batch size"):
        _check_mid_epoch(path, state, pos, argparse.Namespace(batch_size=16), 2, 3)
    with pytest.raises(UserError, match="epochs have 2 steps"):
        _check_mid_epoch(path, state, pos, argparse.Namespace(batch_size=8), 2, 2)
