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
