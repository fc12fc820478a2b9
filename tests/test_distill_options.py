"""tools/distill.py beyond logit KD: hint methods from one teacher forward, extra val sets and ReaL, bad images,
non-finite losses, a compiled teacher."""
import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch

from conftest import DISTILL_BASE as BASE, ROOT, TRAIN_PER_CLASS, run_tool
from shapes.generate import NUM_CLASSES



def test_hint_methods_train_from_one_teacher_forward(shapes_small, teacher_ckpt, tmp_path):
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE,
                 "--model", "resnet10t", "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt),
                 "--kd-loss", "cc", "rkd", "crd", "review", "--kd-hparams", "crd.num_negatives=64",
                 "--epochs", "1", "--output", str(tmp_path), "--experiment", "hint")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "hint"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher_forwards_last_epoch"] == (TRAIN_PER_CLASS * NUM_CLASSES) // 8  # shared by the four students
    state = torch.load(run / "last.pth", weights_only=True)
    helpers = {name: s["kd_helpers"] for name, s in state["settings"].items()}
    assert any(k.startswith("embed_s") for k in helpers["resnet10t-cc"])
    assert "_extra_state" in helpers["resnet10t-crd"]  # the CRD memory bank travels with last.pth
    assert any(k.startswith("abfs.") for k in helpers["resnet10t-review"])
    for name in ("cc", "rkd", "crd", "review"):
        rows = list(csv.DictReader(open(run / f"resnet10t-{name}" / "metrics.csv")))
        assert float(rows[0]["train_kd_loss"]) > 0, name  # ReviewKD's warm-up does not zero the first epoch
        m = timm.create_model("resnet10t", num_classes=NUM_CLASSES)  # student.pth holds the student alone
        m.load_state_dict(torch.load(run / f"resnet10t-{name}" / "student.pth", weights_only=True), strict=True)


@pytest.mark.slow  # several runs of the tool
def test_crd_resume_restores_the_memory_bank(shapes_small, teacher_ckpt, tmp_path):
    args = ["tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, "--model", "resnet10t",
            "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt), "--kd-loss", "crd",
            "--kd-hparams", "crd.num_negatives=64", "--output", str(tmp_path)]
    assert run_tool(*args, "--epochs", "2", "--experiment", "straight").returncode == 0
    proc = subprocess.Popen([sys.executable, *args, "--epochs", "2", "--experiment", "resumed"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "resumed" / "last.pth"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # killed during epoch 2, with epoch 1's last.pth on disk
    proc.wait()
    assert torch.load(last, weights_only=True)["epoch"] == 1
    r = run_tool(*args, "--epochs", "2", "--experiment", "resumed", "--resume")
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["settings"]["resnet10t-crd"]
    b = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)["settings"]["resnet10t-crd"]
    for k in a["student"]:
        torch.testing.assert_close(a["student"][k], b["student"][k], rtol=0, atol=1e-6)
    bank_a, bank_b = a["kd_helpers"]["_extra_state"], b["kd_helpers"]["_extra_state"]
    for k, v in bank_a.items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(v, bank_b[k], rtol=0, atol=1e-6)


def _real_named_copy(src, dst):
    """The val split renamed like ImageNet val (ILSVRC2012_val_XXXXXXXX.JPEG) plus a real.json for it."""
    labels, i = [], 0
    classes = sorted(p.name for p in src.iterdir())
    for c, cls in enumerate(classes):
        (dst / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir()):
            i += 1
            shutil.copy(f, dst / cls / f"ILSVRC2012_val_{i:08d}.JPEG")
            # ReaL-style: the true class, plus a second 'also correct' class for odd images; none for every 4th
            labels.append([] if i % 4 == 0 else [c] + ([(c + 1) % len(classes)] if i % 2 else []))
    return labels


def test_extra_val_folders_and_real_labels(shapes_small, tmp_path):
    cls = shapes_small["classification"]
    data = tmp_path / "data"
    shutil.copytree(cls / "train", data / "train")
    labels = _real_named_copy(cls / "val", data / "val")
    (tmp_path / "real.json").write_text(json.dumps(labels))
    # an ImageNet-V2-style copy: class folders named by class index
    v2 = tmp_path / "v2"
    for i, c in enumerate(sorted(p.name for p in (cls / "val").iterdir())):
        shutil.copytree(cls / "val" / c, v2 / str(i))
    r = run_tool("tools/distill.py", "--data-dir", str(data), *BASE, "--model", "resnet10t", "--epochs", "1",
                 "--extra-val", f"v2={v2}", f"same={cls / 'val'}", "--real-labels", str(tmp_path / "real.json"),
                 "--output", str(tmp_path), "--experiment", "e")
    assert r.returncode == 0, r.stderr[-3000:]
    row = list(csv.DictReader(open(tmp_path / "e" / "metrics.csv")))[-1]
    # the same images under two layouts give the same accuracy as the main val split
    assert float(row["v2_top1"]) == pytest.approx(float(row["val_top1"]))
    assert float(row["same_top1"]) == pytest.approx(float(row["val_top1"]))
    # ReaL counts only labelled images, and accepts either listed class: recompute it from the student
    m = timm.create_model("resnet10t", num_classes=NUM_CLASSES)
    m.load_state_dict(torch.load(tmp_path / "e" / "student.pth", weights_only=True))
    m.eval()
    cfg = timm.data.resolve_data_config({"input_size": (3, 32, 32), "crop_pct": 0.95}, model=m)
    tf = timm.data.create_transform(**cfg)
    from PIL import Image
    files = sorted((data / "val").rglob("*.JPEG"), key=lambda p: p.name)
    hit = n = 0
    with torch.no_grad():
        for f in files:
            real = labels[int(f.stem.split("_")[-1]) - 1]
            if not real:
                continue
            pred = m(tf(Image.open(f).convert("RGB"))[None]).argmax(1).item()
            hit, n = hit + (pred in real), n + 1
    assert float(row["val_real_top1"]) == pytest.approx(100 * hit / n, abs=1e-6)


@pytest.mark.slow  # several runs of the tool
def test_bad_image_stops_or_is_skipped_and_counted(shapes_small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_small["classification"], data)
    victim = sorted((data / "train").rglob("*.*"))[3]
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated image
    args = ["tools/distill.py", "--data-dir", str(data), *BASE, "--model", "resnet10t", "--epochs", "1",
            "--output", str(tmp_path)]
    r = run_tool(*args, "--experiment", "stop")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(victim) in r.stderr and "--skip-bad-images" in r.stderr
    r = run_tool(*args, "--experiment", "skip", "--skip-bad-images")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipped 1 unreadable image(s): {victim}" in r.stdout
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_images"] == 1


@pytest.mark.slow  # several runs of the tool
def test_nonfinite_loss_stops_or_is_skipped(shapes_small, tmp_path):
    args = ["tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, "--model", "resnet10t",
            "--opt", "sgd", "--lr", "1e30", "--epochs", "1", "--output", str(tmp_path)]
    r = run_tool(*args, "--experiment", "stop")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "non-finite loss at epoch 1 step" in r.stderr and "ori=" in r.stderr
    r = run_tool(*args, "--experiment", "skip", "--skip-nonfinite")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped the update at epoch 1 step" in r.stdout
    skipped = json.loads((tmp_path / "skip" / "summary.json").read_text())["settings"]["resnet10t"]["skipped_steps"]
    assert 0 < skipped < (TRAIN_PER_CLASS * NUM_CLASSES) // 8  # the first steps were finite and applied


@pytest.mark.slow
def test_compiled_teacher_gives_the_same_run(shapes_small, teacher_ckpt, tmp_path):
    args = ["tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, "--model", "resnet10t",
            "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt), "--epochs", "1",
            "--output", str(tmp_path)]
    assert run_tool(*args, "--experiment", "eager").returncode == 0
    r = run_tool(*args, "--experiment", "compiled", "--teacher-compile")
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "eager" / "student.pth", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "student.pth", weights_only=True)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-3


def test_teacher_amp_follows_the_device():
    from distill.run_setup import teacher_amp_dtype
    cpu = torch.device("cpu")
    assert teacher_amp_dtype("auto", None, cpu) is None  # no silent bf16 on CPUs (slow without native bf16)
    assert teacher_amp_dtype("auto", torch.bfloat16, cpu) is torch.bfloat16
    assert teacher_amp_dtype("off", torch.bfloat16, cpu) is None
    assert teacher_amp_dtype("float16", None, cpu) is torch.float16


VIT = "vit_tiny_patch16_224"


def test_teacher_is_evaluated_through_the_wrapper_at_its_own_size(shapes_small, tmp_path):
    """A 64 px student with a ViT teacher built for 224 px (--teacher-resize 224) and normalised differently
    (mean/std 0.5): the run starts, and the teacher top-1 it reports is the wrapper's (resize + re-normalisation),
    computed here independently from the val images."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    from distill.teacher import build_teacher
    torch.manual_seed(0)
    vit = timm.create_model(VIT, num_classes=NUM_CLASSES)  # random weights: nothing is downloaded
    assert vit.pretrained_cfg["input_size"][-1] == 224 and vit.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    ckpt = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), ckpt)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *BASE, "--img-size", "64",
                 "--crop-pct", "1.0", "--mean", *map(str, mean), "--std", *map(str, std), "--model", "resnet18",
                 "--teacher", VIT, "--teacher-checkpoint", str(ckpt), "--teacher-resize", "224",
                 "--epochs", "1", "--limit-train-batches", "1", "--output", str(tmp_path), "--experiment", "vit")
    assert r.returncode == 0, r.stderr[-2000:]
    reported = json.loads((tmp_path / "vit" / "summary.json").read_text())["teacher_top1"]

    teacher = build_teacher(VIT, NUM_CLASSES, str(ckpt), student_mean=mean, student_std=std, resize=224)
    val = ImageFolder(str(shapes_small["classification"] / "val"),
                      transform=create_transform(64, is_training=False, interpolation="bicubic", mean=mean, std=std,
                                                 crop_pct=1.0))
    x = torch.stack([img for img, _ in val])
    y = torch.tensor([label for _, label in val])
    wrapper_top1 = 100.0 * (teacher(x).logits.argmax(1) == y).float().mean().item()
    assert reported == pytest.approx(wrapper_top1, abs=1e-4)
