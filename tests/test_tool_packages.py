"""The logic behind tools/*.py lives in packages and runs in-process: the study's dry run, the demo's report, the
user errors of export and CKA, each called directly (no process)."""
import argparse

import pytest

from common.errors import UserError


def test_study_dry_run_in_process(capsys):
    from study.cli import run_study
    a = argparse.Namespace(spec="configs/study/mini.yaml", data_dir=None, out=None, dry_run=True, launcher="none",
                           nproc=None, profile="default", jobs=1, threads=None, report_only=False, quiet=False,
                           executor="inline", status=False, cancel=False,
                           **dict.fromkeys(("partition", "account", "qos", "constraint", "nodes", "gpus_per_node",
                                            "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min")))
    assert run_study(a) is None
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("python tools/make_shapes.py ") and any("tools/distill.py" in ln for ln in lines)


def test_demo_report_in_process(tmp_path):
    from demo.chain import PROFILES, STEPS, write_report
    assert set(PROFILES) == {"full", "smoke"} and STEPS[0] == "shapes" and STEPS[-1] == "export"
    stats = [0.5, 0.8, 0.6, 0.1, 0.4, 0.7] + [0.0] * 6
    rep = {"teacher_model": "resnet18", "student_model": "resnet18", "teacher_top1": 90.0, "student_top1": 30.0,
           "scratch_top1": 23.0, "kd_gain": 7.0, "bbox_mAP": 0.038, "segm_mAP": 0.027, "onnx_max_abs_diff": 2e-6,
           "profile": "smoke", "seed": 0, "seconds": 100.0, "num_classes": 12, "chance_top1": 100 / 12,
           "environment": {"lock_sha256": "abc", "python": "3.11", "packages": {}}, "environment_warning": None,
           "coco": {"bbox": {"stats": stats}, "segm": {"stats": stats}}}
    write_report(tmp_path, rep, {"shapes": 1.0})
    md = (tmp_path / "report.md").read_text()
    assert "| stage | model | result |" in md and "KD gain +7.0 points" in md and "| shapes | 1.0 |" in md


def test_export_and_cka_user_errors_in_process(tmp_path):
    from distill.cka_run import compare
    from export.cli import run_export
    with pytest.raises(UserError, match="--int8-val needs --int8-calib"):
        run_export(argparse.Namespace(int8_val=str(tmp_path), int8_calib=None))
    with pytest.raises(UserError, match="--batch-size must be at least 4"):
        compare(argparse.Namespace(batch_size=2, max_images=None))
    with pytest.raises(UserError, match="--max-images must be at least 4"):
        compare(argparse.Namespace(batch_size=8, max_images=2))
