"""tools/distill.py end to end on tiny data: outputs, strict timm loading, teacher sharing, resume, DDP."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch

from conftest import DISTILL_BASE as BASE, ROOT, TRAIN_PER_CLASS, run_tool
from shapes.generate import NUM_CLASSES



def test_kd_run_outputs_and_strict_timm_load(shapes_small, teacher_ckpt, tmp_path):
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE,
                 "--model", "resnet10t", "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt),
                 "--kd-loss", "kd", "--epochs", "2", "--model-ema", "--model-ema-decay", "0.9",
                 "--output", str(tmp_path), "--experiment", "kd")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "kd"
    for f in ("config.yaml", "metrics.csv", "last.pth", "student.pth", "student_ema.pth", "summary.json"):
        assert (run / f).is_file(), f
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["train_kd_loss"]) > 0 and 0 <= float(rows[-1]["val_top1"]) <= 100
    for name in ("student.pth", "student_ema.pth"):
        m = timm.create_model("resnet10t", num_classes=NUM_CLASSES)
        m.load_state_dict(torch.load(run / name, weights_only=True), strict=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher_top1"] is not None


def test_one_teacher_forward_feeds_two_students(shapes_small, teacher_ckpt, tmp_path):
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE,
                 "--model", "resnet10t", "resnet18", "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt),
                 "--kd-loss", "kd", "dist", "--epochs", "1", "--output", str(tmp_path), "--experiment", "two")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    n_batches = (TRAIN_PER_CLASS * NUM_CLASSES) // 8
    assert summary["teacher_forwards_last_epoch"] == n_batches  # not 2 x n_batches
    assert set(summary["settings"]) == {"resnet10t-kd", "resnet18-dist"}
    for name, model in (("resnet10t-kd", "resnet10t"), ("resnet18-dist", "resnet18")):
        m = timm.create_model(model, num_classes=NUM_CLASSES)
        m.load_state_dict(torch.load(tmp_path / "two" / name / "student.pth", weights_only=True), strict=True)


@pytest.mark.slow  # several runs of the tool
def test_killed_run_resumes_to_the_same_student(shapes_small, teacher_ckpt, tmp_path):
    args = [sys.executable, "tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE,
            "--model", "resnet10t", "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt),
            "--kd-loss", "kd", "--epochs", "3", "--mixup", "0.2", "--cutmix", "1.0", "--aa", "rand-m7-mstd0.5",
            "--model-ema", "--model-ema-decay", "0.9"]
    ref = subprocess.run(args + ["--output", str(tmp_path), "--experiment", "ref"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen(args + ["--output", str(tmp_path), "--experiment", "cut"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "cut" / "last.pth"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(last, weights_only=True)["epoch"]
    assert done < 3, "the run finished before it could be killed"
    r = subprocess.run(args + ["--output", str(tmp_path), "--experiment", "cut", "--resume"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {last} at epoch {done}" in r.stdout
    for name in ("student.pth", "student_ema.pth"):
        a = torch.load(tmp_path / "ref" / name, weights_only=True)
        b = torch.load(tmp_path / "cut" / name, weights_only=True)
        for k in a:
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), (name, k)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(shapes_small, tmp_path):
    """Same global batch (2 x 4 vs 1 x 8) and a BN-free student: the same losses, up to float summation order
    (the gradient all-reduce), which Adam's normalised updates amplify a little by the second epoch."""
    common = ["--data-dir", str(shapes_small["classification"]), "--img-size", "32", "--workers", "0",
              "--warmup-epochs", "0", "--drop-path", "0", "--lr", "1e-3", "--no-aug", "--progress", "log",
              "--model", "vit_tiny_patch16_224", "--epochs", "2", "--output", str(tmp_path), "--opt", "adamw"]
    one = run_tool("tools/distill.py", *common, "--batch-size", "8", "--experiment", "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "tools/distill.py", *common, "--batch-size", "4", "--experiment", "two"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # two processes share the 2 cores
    assert two.returncode == 0, two.stderr[-3000:]
    a = list(csv.DictReader(open(tmp_path / "one" / "metrics.csv")))
    b = list(csv.DictReader(open(tmp_path / "two" / "metrics.csv")))
    for ra, rb in zip(a, b):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-3)
        assert float(ra["val_loss"]) == pytest.approx(float(rb["val_loss"]), rel=5e-3)
    cfg = (tmp_path / "two" / "config.yaml").read_text()
    assert "world_size: 2" in cfg
    m = timm.create_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES, img_size=32)
    m.load_state_dict(torch.load(tmp_path / "two" / "student.pth", weights_only=True), strict=True)


@pytest.mark.slow  # two runs of the tool
def test_scratch_setting_trains_next_to_kd_from_the_same_weights(shapes_small, teacher_ckpt, tmp_path):
    """--kd-loss none: the hard-label baseline in the same run; every setting of a model starts from the same
    weights, so with a zero learning rate both students stay identical, and with a real one they part."""
    def run(exp, lr):
        r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, "--model", "resnet18",
                     "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt), "--kd-loss", "kd", "none",
                     "--epochs", "1", "--lr", lr, "--min-lr", "0", "--output", str(tmp_path), "--experiment", exp)
        assert r.returncode == 0, r.stderr[-3000:]
        s = json.loads((tmp_path / exp / "summary.json").read_text())
        assert s["settings"]["resnet18-none"]["kd_weight"] == 0.0 and s["settings"]["resnet18-none"]["kd_loss"] is None
        assert s["teacher_forwards_last_epoch"] == (TRAIN_PER_CLASS * NUM_CLASSES) // 8  # one per batch for both
        rows = list(csv.DictReader(open(tmp_path / exp / "resnet18-none" / "metrics.csv")))
        assert float(rows[0]["train_kd_loss"]) == 0.0
        load = lambda n: torch.load(tmp_path / exp / n / "student.pth", weights_only=True)  # noqa: E731
        return load("resnet18-kd"), load("resnet18-none")
    kd, none = run("lr0", "0")
    assert all(torch.equal(kd[k], none[k]) for k in kd)
    kd, none = run("lr", "1e-3")
    assert not all(torch.equal(kd[k], none[k]) for k in kd if kd[k].is_floating_point())
