"""tools/transfer.py fine-tunes the CPU Mask R-CNN from a distilled student, writes results.json, resumes."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import NO_WORKERS, ROOT, run_main, run_tool
from helpers_models import nontrivial

CFG = "configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py"


def opts(coco, epochs):
    root = f"{coco}/"
    ann = f"{root}annotations/instances_val2017.json"
    return ["--cfg-options", f"train_dataloader.dataset.data_root={root}", f"val_dataloader.dataset.data_root={root}",
            f"test_dataloader.dataset.data_root={root}", f"val_evaluator.ann_file={ann}",
            f"test_evaluator.ann_file={ann}", f"train_cfg.max_epochs={epochs}", f"train_cfg.val_interval={epochs}",
            *NO_WORKERS, "default_hooks.logger.interval=1"]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    p = tmp_path_factory.mktemp("student") / "student.pth"
    torch.save(nontrivial("resnet18", num_classes=5).state_dict(), p)
    return p


@pytest.mark.slow
def test_finetune_evaluate_and_test(r18_workdir, tmp_path):
    """The shared work dir (conftest.r18_workdir): results.json, the converted backbone, the epoch checkpoint with
    the student's weights in it; tools/test.py reproduces the validation's mAP and draws every val image."""
    wd, coco = r18_workdir["work_dir"], r18_workdir["coco"]
    res = json.loads((wd / "results.json").read_text())
    for iou in ("bbox", "segm"):
        assert set(res[iou]) == {"mAP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (wd / "backbone.pth").is_file() and (wd / "epoch_1.pth").is_file()
    # the backbone really came from the student
    ck = torch.load(wd / "epoch_1.pth", weights_only=False)
    assert "backbone.layer4.1.bn2.running_var" in ck["state_dict"]
    bb = torch.load(wd / "backbone.pth", weights_only=True)["state_dict"]
    student = torch.load(r18_workdir["student"], weights_only=True)
    assert torch.equal(bb["backbone.layer1.0.conv1.weight"], student["layer1.0.conv1.weight"])
    r = run_tool("tools/test.py", CFG, str(wd / "epoch_1.pth"), "--out", str(tmp_path / "test.json"),
                 "--work-dir", str(tmp_path / "t"), "--show-dir", str(tmp_path / "vis"), *opts(coco, 1)[:6])
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "vis").glob("*.png"))) == 12  # one drawing per val image
    stats = json.loads((tmp_path / "test.json").read_text())
    assert len(stats["bbox"]["stats"]) == 12 and len(stats["segm"]["stats"]) == 12
    assert stats["bbox"]["stats"][0] == pytest.approx(res["bbox"]["mAP"], abs=1e-3)


def test_wrong_backbone_is_refused(student, tmp_path):
    src = tmp_path / "r34.pth"
    torch.save(nontrivial("resnet34", num_classes=5).state_dict(), src)
    r = run_main("tools/transfer.py", CFG, "--checkpoint", str(src), "--work-dir", str(tmp_path / "w"))
    assert r.returncode == 2 and "depth=18" in r.stderr and "resnet34" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_killed_finetune_resumes(shapes_small, student, tmp_path):
    wd = tmp_path / "det"
    cmd = [sys.executable, "tools/transfer.py", CFG, "--checkpoint", str(student), "--work-dir", str(wd),
           *opts(shapes_small["coco"], 3)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (wd / "epoch_1.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (wd / "results.json").exists(), "the run finished before it could be killed"
    r = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed epoch: 1" in (r.stdout + r.stderr) or "resumed epoch: 2" in (r.stdout + r.stderr)
    res = json.loads((wd / "results.json").read_text())
    assert res["epoch"] == 3 and "bbox" in res and "segm" in res


@pytest.mark.slow
def test_cascade_finetune_and_summary(shapes_small, student, tmp_path):
    wd = tmp_path / "cascade"
    r = run_tool("tools/transfer.py", "configs/detection/cpu/cascade-mask-rcnn_r18_fpn_shapes.py", "--checkpoint",
                 str(student), "--work-dir", str(wd), *opts(shapes_small["coco"], 1))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((wd / "results.json").read_text())
    assert 0 <= res["bbox"]["mAP"] <= 1 and 0 <= res["segm"]["mAP"] <= 1
    r = run_tool("tools/summarize.py", str(tmp_path), "--out", str(tmp_path / "table.md"))
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "| cascade | CascadeRCNN | ResNet-18 | resnet18 (student" in table and "| 1 ep |" in table
    assert f"{100 * res['bbox']['mAP']:.1f} | {100 * res['segm']['mAP']:.1f} |" in table
