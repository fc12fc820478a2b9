"""Teacher soft-label cache: replayed views equal recorded ones, cached runs equal online runs, bad caches refused."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from conftest import DISTILL_BASE as BASE, ROOT, built_once, run_main, run_tool
from shapes.generate import NUM_CLASSES

# the strong-recipe augmentations, all replayed: crop, flip, RandAugment, erasing, mixup/cutmix, repeats
AUG = ["--aa", "rand-m7-mstd0.5", "--reprob", "0.25", "--aug-repeats", "3", "--mixup", "0.2", "--cutmix", "1.0",
       "--mixup-mode", "sample"]


@pytest.fixture(scope="module")
def recorded(shapes_small, teacher_ckpt, tmp_path_factory):
    """A KD run with the online teacher that also records the teacher's full logits (k = all classes); built once
    for both xdist workers (conftest.built_once)."""
    def record(out):
        r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, *AUG,
                     "--model", "resnet10t", "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt),
                     "--epochs", "2", "--output", str(out), "--experiment", "online",
                     "--record-teacher", str(out / "cache"), "--teacher-topk", "100")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "MB per epoch" in r.stdout
        return {"out": out}
    return built_once(tmp_path_factory, "teacher_cache", record)["out"]


def test_cache_layout_is_memory_mappable(recorded):
    meta = json.loads((recorded / "cache" / "meta.json").read_text())
    assert meta["k"] == NUM_CLASSES and meta["num_classes"] == NUM_CLASSES and meta["epochs"] == [0, 1]
    for e in (0, 1):
        v = np.load(recorded / "cache" / f"epoch_{e:04d}.values.npy", mmap_mode="r")
        i = np.load(recorded / "cache" / f"epoch_{e:04d}.indices.npy", mmap_mode="r")
        lse = np.load(recorded / "cache" / f"epoch_{e:04d}.lse.npy", mmap_mode="r")
        assert v.dtype == np.float16 and i.dtype == np.int16 and v.shape == (meta["positions_per_epoch"], NUM_CLASSES)
        assert np.isfinite(lse).all()  # every position of the epoch was recorded
        assert (np.diff(v.astype(np.float32), axis=1) <= 0).all()  # top-k in descending order
        assert meta["bytes_per_epoch"] == v.nbytes + i.nbytes + lse.nbytes


def test_replayed_view_gives_the_recorded_teacher_topk(shapes_small, teacher_ckpt, recorded):
    """Rebuild the augmented views of epoch 1 from (seed, epoch, position) alone and run the teacher on them."""
    from distill.args import parse_args
    from distill.data import build_dataset, build_train_loader
    from distill.teacher import build_teacher
    args = parse_args(["--data-dir", str(shapes_small["classification"]), *BASE, *AUG, "--workers", "2"])
    ds = build_dataset(args.data_dir, "train", is_training=True)
    cfg = {"input_size": (3, 32, 32), "mean": timm.data.IMAGENET_DEFAULT_MEAN,
           "std": timm.data.IMAGENET_DEFAULT_STD, "interpolation": "bicubic"}
    loader = build_train_loader(ds, args, cfg, torch.device("cpu"), rank=1, world_size=2, num_classes=NUM_CLASSES)
    loader.sampler.set_epoch(1)  # another world size and worker count than the recording run
    teacher = build_teacher("resnet18", NUM_CLASSES, str(teacher_ckpt), student_mean=cfg["mean"], student_std=cfg["std"])
    values = np.load(recorded / "cache" / "epoch_0001.values.npy")
    indices = np.load(recorded / "cache" / "epoch_0001.indices.npy")
    checked = 0
    for x, _, positions, _, _ in loader:
        top = teacher(x).logits.topk(NUM_CLASSES, 1)
        p = positions.numpy()
        assert (top.indices.numpy() == indices[p]).all()
        np.testing.assert_allclose(top.values.numpy(), values[p].astype(np.float32), atol=2e-2, rtol=2e-3)
        checked += len(p)
    assert checked >= 32


def test_cached_run_trains_the_same_student_as_the_online_run(shapes_small, recorded, tmp_path):
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, *AUG,
                 "--model", "resnet10t", "--teacher-cache", str(recorded / "cache"), "--epochs", "2",
                 "--output", str(tmp_path), "--experiment", "cached")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no teacher forward" in r.stdout
    summary = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert summary["teacher"] == "resnet18" and summary["teacher_forwards_last_epoch"] == 0
    a = torch.load(recorded / "online" / "student.pth", weights_only=True)
    b = torch.load(tmp_path / "cached" / "student.pth", weights_only=True)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-3, diff  # float16 storage of the logits is the only difference


@pytest.mark.slow
def test_cache_recorded_on_one_process_replays_under_torchrun_on_two(shapes_small, recorded, teacher_ckpt, tmp_path):
    """The recording above ran on 1 process (batch 8); here 2 torchrun processes (2 x 4) train once with the
    online teacher and once from that cache: the teacher logits they use must agree, so the students do."""
    def torchrun(*extra, exp):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, *AUG,
                            "--batch-size", "4", "--model", "resnet10t", "--epochs", "2", "--output", str(tmp_path),
                            "--experiment", exp, *extra], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        return torch.load(tmp_path / exp / "student.pth", weights_only=True)
    online = torchrun("--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt), exp="online2")
    cached = torchrun("--teacher-cache", str(recorded / "cache"), exp="cached2")
    assert json.loads((tmp_path / "cached2" / "summary.json").read_text())["teacher_forwards_last_epoch"] == 0
    diff = max((online[k].float() - cached[k].float()).abs().max().item() for k in online)
    assert diff < 1e-3, diff


@pytest.mark.parametrize("change, message", [
    (["--seed", "7"], "--seed: cache 42, run 7"),
    (["--aa", "rand-m9-mstd0.5"], "--aa"),
    (["--epochs", "3"], "missing 2"),
    (["--mixup-mode", "batch"], "--mixup-mode sample"),
    (["--train-subset", "0.5"], "training data"),
])
def test_mismatched_cache_is_refused(shapes_small, recorded, tmp_path, change, message):
    args = ["--data-dir", str(shapes_small["classification"]), *BASE, *AUG, "--model", "resnet10t",
            "--teacher-cache", str(recorded / "cache"), "--epochs", "2", "--output", str(tmp_path)]
    r = run_main("tools/distill.py", *args, *change)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr[-2000:]


def test_hint_loss_cannot_use_a_logit_cache(shapes_small, recorded, tmp_path):
    r = run_main("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, *AUG,
                 "--model", "resnet10t", "--teacher-cache", str(recorded / "cache"), "--kd-loss", "rkd",
                 "--epochs", "1", "--output", str(tmp_path))
    assert r.returncode != 0 and "needs the online teacher's features" in r.stderr and "Traceback" not in r.stderr


def test_topk_tail_reconstruction_keeps_topk_and_mass():
    from distill.teacher_cache import reconstruct_logits
    z = torch.randn(4, 10) * 3
    v, i = z.topk(3, 1)
    full = reconstruct_logits(v, i, torch.logsumexp(z, 1), 10)
    p, q = z.softmax(1), full.softmax(1)
    torch.testing.assert_close(q.gather(1, i), p.gather(1, i), atol=1e-6, rtol=1e-5)  # top-k exact at T = 1
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(1, i, False)
    torch.testing.assert_close((q * tail).sum(1), (p * tail).sum(1), atol=1e-6, rtol=1e-5)
    assert torch.allclose(reconstruct_logits(*z.topk(10, 1), torch.logsumexp(z, 1), 10), z)
