"""tools/infer.py: a fine-tuned work dir on the user's images through mmdet's DetInferencer, for the CNN and the ViT
detectors: one picture and one JSON per image, the predictions chosen by --score-thr and --top-k. The checks read
the boxes and the JSON, not the pixels."""
import json
from pathlib import Path

import pytest
import torch

from conftest import R18_DET_CFG, ROOT, run_main, tool_main

FIELDS = {"image", "picture", "checkpoint", "score_thr", "top_k", "height", "width", "labels", "classes", "scores",
          "bboxes", "masks"}


def val_images(coco: Path, n: int) -> list[str]:
    return [str(p) for p in sorted((coco / "val2017").iterdir())[:n]]


def check_outputs(records: list[dict], out: Path, images: list[str], top_k: int, classes: tuple) -> None:
    assert [r["image"] for r in records] == images
    for r, image in zip(records, images):
        stem = Path(image).stem
        on_disk = json.loads((out / "preds" / f"{stem}.json").read_text())
        assert on_disk == json.loads(json.dumps(r))  # what main() returned is what it wrote
        assert set(on_disk) == FIELDS, set(on_disk) ^ FIELDS
        n = len(on_disk["labels"])
        assert n == top_k  # --score-thr 0: the detector's best top_k of its many candidates
        assert len(on_disk["scores"]) == len(on_disk["bboxes"]) == len(on_disk["masks"]) == len(on_disk["classes"]) == n
        assert on_disk["scores"] == sorted(on_disk["scores"], reverse=True)
        assert on_disk["classes"] == [classes[i] for i in on_disk["labels"]]
        h, w = on_disk["height"], on_disk["width"]
        for x1, y1, x2, y2 in on_disk["bboxes"]:
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert all(m["size"] == [h, w] and isinstance(m["counts"], str) for m in on_disk["masks"])  # COCO RLE
        assert (out / "vis" / f"{stem}.png").stat().st_size > 1000


def test_infer_on_a_fine_tuned_cnn_work_dir(r18_workdir, tmp_path):
    from mmengine.config import Config
    wd = r18_workdir["work_dir"]
    config = wd / Path(R18_DET_CFG).name  # the copy mmengine saved in the work dir
    classes = Config.fromfile(str(ROOT / R18_DET_CFG)).metainfo["classes"]
    images = val_images(r18_workdir["coco"], 3)
    out = tmp_path / "preds"
    records = tool_main("tools/infer.py")([str(config), str(wd / "epoch_1.pth"), *images, "--out", str(out),
                                           "--score-thr", "0", "--top-k", "3", "--grid", str(tmp_path / "grid.png")])
    check_outputs(records, out, images, 3, classes)
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    # DetInferencer's own default threshold: this briefly trained detector scores far below it, nothing is kept
    r = run_main("tools/infer.py", str(config), str(wd), images[0], "--out", str(tmp_path / "default"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 image(s), 0 prediction(s) at score >= 0.3" in r.stdout
    assert json.loads((tmp_path / "default" / "preds" / f"{Path(images[0]).stem}.json").read_text())["labels"] == []


def test_infer_on_a_vit_detector(shapes_small, tmp_path):
    """The ViT-T detector (ViTDet's backbone and pyramid, transfer/vitdet.py) as mmengine saves a checkpoint: its
    weights (untrained here: the check is the path through DetInferencer, not the quality) and the dataset's
    classes in the checkpoint's meta."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import transfer.vitdet  # noqa: F401  (registers the backbone and the pyramid)
    from transfer.finetune import load_config
    register_all_modules()
    cfg = load_config(ROOT / "configs/detection/cpu/mask-rcnn_vit-t_simple-fpn_shapes.py")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    classes = tuple(cfg.metainfo["classes"])
    ckpt = tmp_path / "iter_1.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": classes}}}, ckpt)
    images = val_images(shapes_small["coco"], 2)
    out = tmp_path / "preds"
    records = tool_main("tools/infer.py")(["configs/detection/cpu/mask-rcnn_vit-t_simple-fpn_shapes.py", str(ckpt),
                                           *images, "--out", str(out), "--score-thr", "0", "--top-k", "2"])
    check_outputs(records, out, images, 2, classes)


def test_infer_mistakes_are_one_line(r18_workdir, tmp_path):
    wd = r18_workdir["work_dir"]
    config = str(wd / Path(R18_DET_CFG).name)
    empty = tmp_path / "empty"
    empty.mkdir()
    image = val_images(r18_workdir["coco"], 1)[0]
    for args, says in [((config, str(wd / "epoch_1.pth"), str(tmp_path / "nope.png")), "image not found"),
                       ((config, str(wd / "epoch_1.pth"), str(empty)), "no images"),
                       ((config, str(tmp_path / "none.pth"), image), "checkpoint not found"),
                       ((config, str(tmp_path), image), "a folder without last_checkpoint"),
                       ((config, str(wd / "epoch_1.pth"), image, "--top-k", "0"), "--top-k must be at least 1")]:
        r = run_main("tools/infer.py", *args, "--out", str(tmp_path / "o"))
        assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr[-2000:])
