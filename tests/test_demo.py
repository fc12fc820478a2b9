"""The demo chain at its smallest size: every step through its real command line, and the report."""
import json

import pytest

from conftest import run_tool

KEYS = ("teacher_top1", "student_top1", "scratch_top1", "kd_gain", "chance_top1", "bbox_mAP", "segm_mAP",
        "onnx_max_abs_diff", "seconds")


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    out = tmp_path / "demo"
    r = run_tool("tools/demo.py", "--profile", "smoke", "--out", str(out), "--workers", "0", timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rep = json.loads((out / "report.json").read_text())
    for k in KEYS:
        assert isinstance(rep[k], (int, float)), k
    assert 0 <= rep["bbox_mAP"] <= 1 and 0 <= rep["segm_mAP"] <= 1
    assert rep["kd_gain"] == rep["student_top1"] - rep["scratch_top1"]
    # both students come from one run (one teacher forward per batch) and are plain timm state dicts
    summary = json.loads((out / "students" / "summary.json").read_text())
    assert set(summary["settings"]) == {"resnet18-kd", "resnet18-none"}
    assert summary["settings"]["resnet18-none"]["kd_weight"] == 0.0
    assert rep["onnx_max_abs_diff"] <= 1e-4
    md = (out / "report.md").read_text()
    assert "| stage | model | result |" in md and "curves.png" in md and "no teacher" in md
    assert (out / "curves.png").stat().st_size > 10_000
    for step in ("shapes", "teacher", "distill", "convert", "transfer", "evaluate", "pictures", "export"):
        assert (out / "logs" / f"{step}.log").is_file(), step
    # what the detector sees: tools/infer.py's pictures of the val images, as one grid the report shows
    assert (out / "detections.png").stat().st_size > 10_000 and "![detections](detections.png)" in md
    assert rep["pictures"]["images"] == 8 and len(list((out / "pictures" / "preds").glob("*.json"))) == 8
    assert (out / "student_backbone.onnx").is_file()
    # the report names its environment, and every run of the chain shares it
    env = rep["environment"]
    assert env["lock_sha256"] and env["packages"]["mmcv"] and env["cpu_model"] and env["python"]
    assert set(env) >= {"git_commit", "git_dirty", "cpu_flags", "torch_threads", "gpu"}
    assert rep["environment_warning"] is None and "Environment: lock " + env["lock_sha256"] in md
    assert summary["environment"]["packages"] == env["packages"]

    # the same command again: the same numbers (a fresh output folder, the data made anew from its seed)
    again = tmp_path / "again"
    r = run_tool("tools/demo.py", "--profile", "smoke", "--out", str(again), "--workers", "0", timeout=1200)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rep2 = json.loads((again / "report.json").read_text())
    for k in KEYS[:-1]:
        assert rep2[k] == rep[k], k
    assert {t: rep2["coco"][t] for t in ("bbox", "segm")} == {t: rep["coco"][t] for t in ("bbox", "segm")}


def test_full_demo_gates_name_what_was_missed():
    """The full profile's gates on a report that met them, then with each figure just below its gate."""
    from common.io import UserError
    from demo.chain import PROFILES, check_gates
    full = PROFILES["full"]
    ok = {"teacher_top1": 76.7, "kd_gain": 10.7, "bbox_mAP": 0.045, "segm_mAP": 0.031}  # 2026-12-07, docs/demo.md
    check_gates(ok, full)
    check_gates({k: 0.0 for k in ok}, PROFILES["smoke"])  # the smoke profile has no gates
    for key, gate, words in (("teacher_top1", "min_teacher_top1", "teacher did not learn"),
                             ("kd_gain", "min_kd_gain", "KD did not beat the student trained alone"),
                             ("bbox_mAP", "min_bbox_map", "bbox_map"), ("segm_mAP", "min_segm_map", "segm_map")):
        with pytest.raises(UserError, match=words):
            check_gates({**ok, key: full[gate] - 1e-3}, full)
