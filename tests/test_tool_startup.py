"""tools/coco_eval.py and tools/summarize.py start, and run, without importing torch or timm (torch alone is ~1 s of
start-up), and coco_eval parses each JSON file once; summarize reads what ran from results.json."""
import builtins
import importlib.util
import io
import json
import types
from pathlib import Path

import pytest

from common.errors import UserError
from conftest import ROOT, run_tool
from shapes.detections import fake_detections
from transfer.coco_check import check_coco_json

HEAVY = ("torch", "timm", "mmengine", "mmdet")


def imported(stderr: str) -> set[str]:
    """Top-level packages a `python -X importtime` run imported (its stderr)."""
    out = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "package":  # skip the header line
                out.add(name.split(".")[0])
    return out


def run_lean(*args: str):
    r = run_tool("-X", "importtime", *args, timeout=300)
    mods = imported(r.stderr)
    assert "json" in mods or "argparse" in mods, r.stderr[-2000:]  # -X importtime really reported
    return r, mods


@pytest.fixture()
def gt_dt(shapes_small, tmp_path):
    gt = shapes_small["coco"] / "annotations" / "instances_val2017.json"
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(fake_detections(gt)))
    return gt, dt


def test_coco_eval_help_imports_no_torch():
    r, mods = run_lean("tools/coco_eval.py", "--help")
    assert r.returncode == 0 and "--iou-type" in r.stdout, r.stderr[-2000:]
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_coco_eval_run_imports_no_torch(gt_dt, tmp_path):
    gt, dt = gt_dt
    out = tmp_path / "stats.json"
    r, mods = run_lean("tools/coco_eval.py", "--gt", str(gt), "--dt", str(dt), "--iou-type", "bbox", "segm",
                       "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "faster_coco_eval" in mods  # the evaluation really ran in this process
    assert not mods & set(HEAVY), mods & set(HEAVY)
    assert all(len(v["stats"]) == 12 for v in json.loads(out.read_text()).values())


def load_tool(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_coco_eval_opens_each_file_once(gt_dt, monkeypatch):
    """The annotation file is parsed once (the checks run on the parsed data), a shared detections file once."""
    gt, dt = gt_dt
    opened: list[str] = []
    real_open = io.open

    def counting_open(file, *a, **kw):
        if isinstance(file, (str, Path)) and Path(file).resolve() in (gt.resolve(), dt.resolve()):
            opened.append(Path(file).name)
        return real_open(file, *a, **kw)

    tool = load_tool("coco_eval")
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    res = tool.main(["--gt", str(gt), "--dt", str(dt), "--iou-type", "bbox", "segm"])
    assert sorted(opened) == sorted([gt.name, dt.name]), opened
    assert set(res) == {"bbox", "segm"}


def test_check_on_parsed_data_says_what_the_path_says(shapes_small, tmp_path):
    ann = shapes_small["coco"] / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    s_path = check_coco_json(ann, shapes_small["coco"] / "val2017")
    s_data = check_coco_json(ann, shapes_small["coco"] / "val2017", data=data)
    assert s_path == s_data

    def broken():
        d = json.loads(json.dumps(data))
        d["annotations"][0]["bbox"] = [1, 2, -3, 4]
        d["annotations"][1]["image_id"] = 9999
        d["annotations"][3]["category_id"] = 42
        yield d, {}
        d = json.loads(json.dumps(data))
        d["images"][0]["file_name"] = "nope.png"
        yield d, {"image_root": shapes_small["coco"] / "val2017"}
        yield {**data, "annotations": []}, {}
        yield {"images": data["images"], "categories": data["categories"]}, {}
        yield {**data, "images": data["images"] + data["images"][:2]}, {}
        yield [], {}
        yield None, {}

    p = tmp_path / "x.json"
    for d, kw in broken():
        p.write_text(json.dumps(d))
        with pytest.raises(UserError) as from_path:
            check_coco_json(p, **kw)
        with pytest.raises(UserError) as from_data:
            check_coco_json(p, data=d, **kw)
        assert str(from_data.value) == str(from_path.value)
        assert str(from_path.value).startswith(str(p)) and "\n" not in str(from_path.value)


# ---- summarize


def write_runs(root: Path) -> Path:
    """A distillation run (summary.json, config.yaml) and a detection run whose results.json the real hook wrote."""
    from mmengine.config import Config

    from transfer.hooks import ResultsJsonHook
    dist = root / "output" / "kd_run"
    dist.mkdir(parents=True)
    (dist / "summary.json").write_text(json.dumps({"teacher": "resnet50", "epochs": 3, "settings": {
        "kd": {"kd_loss": "kd", "model": "resnet18", "top1": 71.25, "top5": 90.5}}}))
    (dist / "config.yaml").write_text("data_dir: data/shapes\n")
    wd = root / "work_dirs" / "det"
    cfg = Config(dict(model=dict(type="MaskRCNN", backbone=dict(type="mmdet.ResNet", depth=18)),
                      train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=12)))
    hook = ResultsJsonHook(str(wd / "results.json"), student={"timm_model": "resnet18",
                                                              "source": "/runs/student0/student.pth"})
    runner = types.SimpleNamespace(rank=0, epoch=12, iter=300, work_dir=str(wd), cfg=cfg)
    hook.after_val_epoch(runner, {"coco/bbox_mAP": 0.4, "coco/bbox_mAP_50": 0.6, "coco/segm_mAP": 0.35})
    return wd


DET_ROW = "| det | MaskRCNN | ResNet-18 | resnet18 (student0) | 1x | 40.0 | 35.0 |"


def test_summarize_imports_no_torch(tmp_path):
    write_runs(tmp_path)
    r, mods = run_lean("tools/summarize.py", str(tmp_path), "--out", str(tmp_path / "table.md"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not mods & set(HEAVY), mods & set(HEAVY)
    table = (tmp_path / "table.md").read_text()
    assert "| kd_run | kd | resnet50 | resnet18 | 3 | 71.25 | 90.50 |" in table
    assert DET_ROW in table, table
    r, mods = run_lean("tools/summarize.py", "--help")
    assert r.returncode == 0 and not mods & set(HEAVY), mods & set(HEAVY)


def test_transfer_records_the_student_for_results_json(shapes_small, tmp_path):
    """prepare_config hands the student to ResultsJsonHook, so results.json's ``run`` names it."""
    import timm
    import torch

    from transfer.finetune import prepare_config
    student = tmp_path / "student0" / "student.pth"
    student.parent.mkdir()
    torch.save(timm.create_model("resnet18", num_classes=5).state_dict(), student)
    root = f"{shapes_small['coco']}/"
    opts = {f"{s}_dataloader.dataset.data_root": root for s in ("train", "val", "test")}
    opts.update({f"{s}_evaluator.ann_file": f"{root}annotations/instances_val2017.json" for s in ("val", "test")})
    cfg = prepare_config("configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py", student, work_dir=tmp_path / "wd",
                         cfg_options=opts)
    hook = [h for h in cfg.custom_hooks if h["type"] == "ResultsJsonHook"][0]
    assert hook["student"] == {"timm_model": "resnet18", "source": str(student)}
    cfg = prepare_config("configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py", None, work_dir=tmp_path / "wd2",
                         cfg_options=opts, random_init=True)
    hook = [h for h in cfg.custom_hooks if h["type"] == "ResultsJsonHook"][0]
    assert hook["student"] == {"timm_model": None, "source": None}
