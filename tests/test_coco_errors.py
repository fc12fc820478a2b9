"""A COCO JSON with broken or empty annotations (or a head with the wrong class count) ends each detection tool
with one line that names the file, before anything trains or evaluates."""
import json
import shutil

import pytest
import timm
import torch

from conftest import run_main
from shapes.generate import NUM_CLASSES
from common.io import UserError
from shapes.detections import fake_detections
from transfer.coco_check import check_coco_json, check_config_annotations, model_num_classes
from transfer.finetune import load_config

CFG = "configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py"
CASCADE = "configs/detection/cpu/cascade-mask-rcnn_r18_fpn_shapes.py"
FAULTS = ("truncated", "empty", "missing_image", "num_classes")


def make_root(shapes_small, tmp_path, split=None, fault=None):
    """A copy of the shapes COCO set (images linked) whose ``split`` annotation file carries ``fault``."""
    src = shapes_small["coco"]
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for s in ("train", "val"):
        (root / f"{s}2017").symlink_to(src / f"{s}2017", target_is_directory=True)
        shutil.copy(src / "annotations" / f"instances_{s}2017.json", root / "annotations")
    bad = root / "annotations" / f"instances_{split}2017.json"
    if fault == "truncated":
        text = bad.read_text()
        bad.write_text(text[: len(text) // 2])
    elif fault in ("empty", "missing_image"):
        data = json.loads(bad.read_text())
        if fault == "empty":
            data["annotations"] = []
        else:
            data["annotations"][1]["image_id"] = 9999
        bad.write_text(json.dumps(data, indent=1))  # several lines, so a JSON error has a line number
    return root, bad


def cfg_options(root, extra=()):
    ann = f"{root}/annotations/instances_val2017.json"
    return ["--cfg-options", f"train_dataloader.dataset.data_root={root}/", f"val_dataloader.dataset.data_root={root}/",
            f"test_dataloader.dataset.data_root={root}/", f"val_evaluator.ann_file={ann}",
            f"test_evaluator.ann_file={ann}", *extra]


def one_line_error(r, *words):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), r.stderr[-3000:]
    for w in words:
        assert w in last, (w, last)
    return last


# ---- check_coco_json itself


def test_valid_files_pass_and_summarise(shapes_small):
    ann = shapes_small["coco"] / "annotations" / "instances_val2017.json"
    s = check_coco_json(ann, shapes_small["coco"] / "val2017")
    assert s.num_images == 12 and s.num_annotations >= 12 and len(s.categories) == NUM_CLASSES


@pytest.mark.parametrize("fault,words", [
    ("truncated", ["not valid JSON at line", "column"]),
    ("empty", ["'annotations' is empty"]),
    ("missing_image", ["1 annotations point to image ids that are not in 'images'", "2 -> image_id 9999"]),
])
def test_check_coco_json_faults(shapes_small, tmp_path, fault, words):
    _, bad = make_root(shapes_small, tmp_path, "train", fault)
    with pytest.raises(UserError) as e:
        check_coco_json(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bad)), msg
    for w in words:
        assert w in msg, (w, msg)


def test_check_coco_json_more_problems(shapes_small, tmp_path):
    data = json.loads((shapes_small["coco"] / "annotations" / "instances_val2017.json").read_text())
    p = tmp_path / "x.json"

    def fails(d, *words, **kw):
        p.write_text(json.dumps(d))
        with pytest.raises(UserError) as e:
            check_coco_json(p, **kw)
        for w in words:
            assert w in str(e.value), (w, str(e.value))

    fails([], "top level is a JSON list")
    fails({"images": data["images"], "categories": data["categories"]}, "no 'annotations' list")
    d = json.loads(json.dumps(data))
    d["annotations"][0]["bbox"] = [1, 2, -3, 4]
    d["annotations"][3]["category_id"] = 42
    del d["annotations"][5]["bbox"]
    fails(d, "2 annotations lack a bbox of 4 non-negative numbers", "[1, 2, -3, 4]", "no bbox",
          "unknown category ids", "4 -> category_id 42")
    d = json.loads(json.dumps(data))
    d["images"][0]["file_name"] = "nope.png"
    fails(d, "1 of 12 image files are missing under", "nope.png", image_root=shapes_small["coco"] / "val2017")
    p.write_text("")
    with pytest.raises(UserError, match="empty"):
        check_coco_json(p)
    # an image-info file (test-dev style) has no annotations: fine when none are needed
    p.write_text(json.dumps({"images": data["images"], "categories": data["categories"]}))
    assert check_coco_json(p, need_annotations=False).num_annotations == 0
    with pytest.raises(UserError, match="not found"):
        check_coco_json(tmp_path / "missing.json")


def test_config_checks(shapes_small, tmp_path):
    root, _ = make_root(shapes_small, tmp_path)
    opts = dict(x.split("=", 1) for x in cfg_options(root)[1:])
    cfg = load_config(CFG, opts)
    assert model_num_classes(cfg.model) == {"model.roi_head.bbox_head": NUM_CLASSES, "model.roi_head.mask_head": NUM_CLASSES}
    summaries = check_config_annotations(cfg, ("train", "val", "test"), CFG)
    assert sorted(s.path.name for s in summaries) == ["instances_train2017.json", "instances_val2017.json"]
    cascade = load_config(CASCADE, opts)
    assert len(model_num_classes(cascade.model)) == 4  # three box stages and the mask head
    check_config_annotations(cascade, ("train", "val"), CASCADE)
    cfg = load_config(CFG, {**opts, "train_dataloader.dataset.metainfo.classes": ["circle", "square", "hexagon"]})
    with pytest.raises(UserError, match="metainfo.classes name categories the file does not have"):
        check_config_annotations(cfg, ("train",), CFG)


# ---- the command lines


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    p = tmp_path_factory.mktemp("student") / "student.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet18", num_classes=5).state_dict(), p)
    return p


@pytest.mark.parametrize("fault", FAULTS)
def test_transfer_tool(shapes_small, student, tmp_path, fault):
    root, bad = make_root(shapes_small, tmp_path, "val" if fault == "missing_image" else "train", fault)
    extra = ["model.roi_head.bbox_head.num_classes=3"] if fault == "num_classes" else []
    r = run_main("tools/transfer.py", CFG, "--checkpoint", str(student), "--work-dir", str(tmp_path / "wd"),
                 *cfg_options(root, extra))
    if fault == "num_classes":
        one_line_error(r, CFG, "num_classes is 3", f"has {NUM_CLASSES} classes", str(bad))
    else:
        one_line_error(r, str(bad))
    assert not list((tmp_path / "wd").glob("epoch_*.pth"))


@pytest.mark.parametrize("fault", FAULTS)
def test_test_tool(shapes_small, tmp_path, fault):
    root, bad = make_root(shapes_small, tmp_path, "val", fault)
    det = tmp_path / "det.pth"
    torch.save({"state_dict": {}}, det)  # never loaded: the check comes first
    extra = ["model.roi_head.mask_head.num_classes=3"] if fault == "num_classes" else []
    r = run_main("tools/test.py", CFG, str(det), "--work-dir", str(tmp_path / "t"), *cfg_options(root, extra))
    if fault == "num_classes":
        one_line_error(r, CFG, "mask_head.num_classes is 3", f"has {NUM_CLASSES} classes", str(bad))
    else:
        one_line_error(r, str(bad))


@pytest.mark.parametrize("fault", ("truncated", "empty", "missing_image"))
def test_coco_eval_tool(shapes_small, tmp_path, fault):
    root, bad = make_root(shapes_small, tmp_path, "val", fault)
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(fake_detections(shapes_small["coco"] / "annotations" / "instances_val2017.json")))
    r = run_main("tools/coco_eval.py", "--gt", str(bad), "--dt", str(dt), "--iou-type", "bbox")
    one_line_error(r, str(bad))


def test_prepare_config_accepts_valid_data(shapes_small, student, tmp_path):
    from transfer.finetune import prepare_config
    root, _ = make_root(shapes_small, tmp_path)
    opts = dict(x.split("=", 1) for x in cfg_options(root)[1:])
    cfg = prepare_config(CFG, student, work_dir=tmp_path / "wd", cfg_options=opts)
    assert cfg.model.backbone.init_cfg.checkpoint.endswith("backbone.pth")
