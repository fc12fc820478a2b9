"""The built-in data: deterministic, ImageNet/COCO formats that timm and pycocotools read."""
import hashlib
import json

import numpy as np
from pycocotools.coco import COCO

from conftest import TRAIN_PER_CLASS
from shapes.generate import CLASSES, NUM_CLASSES, ShapesSpec, make_classification, make_detection


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_seeded_and_reproducible(tmp_path):
    spec = ShapesSpec(cls_train_per_class=3, cls_val_per_class=1, det_train=3, det_val=2)
    a = make_detection(make_classification(tmp_path / "a", spec, 5), spec, 5)
    b = make_detection(make_classification(tmp_path / "b", spec, 5), spec, 5)
    c = make_classification(tmp_path / "c", spec, 6)
    assert digest(a) == digest(b)
    assert digest(tmp_path / "c" / "train") != digest(tmp_path / "a" / "train")
    del c


def test_imagefolder_layout_reads_in_timm(shapes_small):
    from timm.data import create_dataset
    ds = create_dataset("", root=str(shapes_small["classification"] / "train"), split="")
    assert len(ds) == TRAIN_PER_CLASS * NUM_CLASSES
    assert sorted(ds.reader.class_to_idx) == sorted(CLASSES)
    img, target = ds[0]
    assert img.size == (32, 32) and 0 <= target < NUM_CLASSES


def test_coco_masks_match_boxes_and_areas(shapes_small):
    root = shapes_small["coco"]
    for split, n in (("train", 24), ("val", 12)):
        coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))
        assert len(coco.getImgIds()) == n
        assert len(coco.getAnnIds()) >= n  # several objects per image on average
        assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(CLASSES)
        for ann in coco.loadAnns(coco.getAnnIds()):
            m = coco.annToMask(ann)
            ys, xs = np.nonzero(m)
            x, y, w, h = ann["bbox"]
            # the tip of a small star may rasterise a pixel or two inside its polygon's box
            assert abs(xs.min() - x) <= 2.5 and abs(ys.min() - y) <= 2.5
            assert abs(m.sum() - ann["area"]) <= 0.25 * ann["area"] + 6
        per_img = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
        assert max(per_img) >= 3
        imgs = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())["images"]
        assert all((root / f"{split}2017" / im["file_name"]).is_file() for im in imgs)


def test_coco_writer_box_area_and_mask_from_the_polygon(tmp_path):
    """shapes.coco, the writer of both the shapes world and the rehearsal's stand-in: what pycocotools reads back."""
    from PIL import Image

    from shapes.coco import polygon_instance, save_image, write_instances
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    square = np.array([[10.0, 4.0], [30.0, 4.0], [30.0, 14.0], [10.0, 14.0]])  # 20 x 10 from (10, 4)
    ann = polygon_instance(7, 42, 3, square + 1 / 3)
    assert ann["bbox"] == [10.33, 4.33, 20.0, 10.0] and ann["segmentation"][0][:2] == [10.33, 4.33]
    assert abs(ann["area"] - 200) < 1e-9 and ann["iscrowd"] == 0
    assert (ann["id"], ann["image_id"], ann["category_id"]) == (7, 42, 3)
    image = save_image(Image.new("RGB", (48, 32)), tmp_path / "val2017", 42, "jpg", quality=90)
    assert image == {"id": 42, "file_name": "000000000042.jpg", "width": 48, "height": 32}
    path = write_instances(tmp_path, "val", [image], [ann], [{"id": 3, "name": "box", "supercategory": "box"}])
    assert path == tmp_path / "annotations" / "instances_val2017.json"
    coco = COCO(str(path))
    assert abs(coco.annToMask(coco.loadAnns(7)[0]).sum() - 200) <= 30 and coco.loadImgs(42)[0]["height"] == 32
    assert (tmp_path / "val2017" / image["file_name"]).is_file()


def test_groups_world_classes_layout_and_seed(tmp_path):
    """The structured world (--world groups): families x textures, ImageFolder layout, one image per seed."""
    from PIL import Image

    from shapes import groups
    assert groups.NUM_CLASSES == len(groups.FAMILIES) * len(groups.TEXTURES) == 32
    assert groups.CLASSES[:4] == ("circle_solid", "circle_stripes", "circle_checker", "circle_dots")
    spec = groups.GroupsSpec(cls_train_per_class=2, cls_val_per_class=1, det_train=2, det_val=2)
    a = groups.make_groups(tmp_path / "a", spec, seed=3)
    b = groups.make_classification(tmp_path / "b", spec, seed=3)
    c = groups.make_classification(tmp_path / "c", spec, seed=4)
    for split, n in (("train", 2), ("val", 1)):
        dirs = sorted(p.name for p in (a["classification"] / split).iterdir())
        assert dirs == sorted(groups.CLASSES)
        assert all(len(list((a["classification"] / split / d).glob("*.png"))) == n for d in dirs)
    img = Image.open(a["classification"] / "train" / "star_dots" / "star_dots_00000.png")
    assert img.size == (32, 32) and img.mode == "RGB"
    assert digest(a["classification"]) == digest(b)
    assert digest(c) != digest(b)
    # the COCO set beside it is the default world's (12 classes), for the CPU Mask R-CNN configs
    coco = json.loads((a["coco"] / "annotations" / "instances_train2017.json").read_text())
    assert {cat["name"] for cat in coco["categories"]} == set(CLASSES)
    # a second call reuses the finished world
    stamp = next(tmp_path.glob("a/.done-groups-*"))
    assert groups.make_groups(tmp_path / "a", spec, seed=3) == a and stamp.exists()


def test_make_shapes_tool_world_flag(tmp_path):
    from conftest import run_tool
    r = run_tool("tools/make_shapes.py", "--world", "groups", "--out", str(tmp_path / "g"), "--cls-train-per-class",
                 "1", "--cls-val-per-class", "1", "--det-train", "1", "--det-val", "1", "--num-classes", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "g" / "classification" / "train").iterdir())) == 8
    assert next((tmp_path / "g").glob(".done-groups-v*"))
