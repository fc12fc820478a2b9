"""INT8 export through the real CLI: a valid QDQ file that runs, a top-1/agreement/latency report, clear errors."""
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import run_main, run_tool
from helpers_models import nontrivial
from shapes.generate import NUM_CLASSES


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny shapes ImageFolder set and a resnet18 whose head is fitted to it (diverse, non-constant predictions).

    Random-init predictions are one class for every image, which would make "agreement" trivially 1; a linear
    probe on the frozen random features is the cheapest classifier whose decisions quantization can change.
    """
    from export.quantize import eval_transform
    from shapes.generate import ShapesSpec, make_classification
    from timm.data import ImageDataset
    root = make_classification(tmp_path_factory.mktemp("shapes_int8"),
                               ShapesSpec(cls_train_per_class=12, cls_val_per_class=12, cls_size=32), seed=0)
    m = nontrivial("resnet18", num_classes=NUM_CLASSES)
    ds = ImageDataset(str(root / "train"), transform=eval_transform(m, 32)[0])
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        feats = m.forward_head(m.forward_features(x), pre_logits=True)
    fc = m.get_classifier()
    opt = torch.optim.LBFGS(fc.parameters(), max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(fc(feats), y) + 0.1 * fc.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    src = root / "r18.pth"
    torch.save(m.state_dict(), src)
    return root, src


def _check_int8(path, n_outputs):
    import onnxruntime as ort
    onnx.checker.check_model(str(path), full_check=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input": np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)})
    assert len(outs) == n_outputs and all(o.shape[0] == 2 and np.isfinite(o).all() for o in outs)
    return outs


def test_int8_classifier_top1_and_latency(world, tmp_path):
    root, src = world
    r = run_tool("tools/export_onnx.py", str(src), "--model", "resnet18", "--out", str(tmp_path / "c.onnx"),
                 "--img-size", "32", "--int8-calib", str(root / "train"), "--int8-val", str(root / "val"),
                 "--calib-size", "32", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "c.onnx").is_file()
    assert _check_int8(tmp_path / "c.int8.onnx", 1)[0].shape == (2, NUM_CLASSES)
    rep = json.loads((tmp_path / "r.json").read_text())["int8"]
    print(r.stdout)
    assert "int8 top-1" in r.stdout and f"fp32 {rep['top1_fp32']:.3f}" in r.stdout
    assert "ratio int8/fp32" in r.stdout and rep["int8_over_fp32"] > 0
    assert rep["images"] == 12 * NUM_CLASSES and rep["calib_images"] == 32  # the whole val folder
    assert rep["preprocessing"]["crop_pct"] == 0.95 and rep["preprocessing"]["interpolation"] == "bicubic"
    assert rep["agreement"] >= 0.7 and abs(rep["top1_change"]) <= 0.2
    assert rep["error"]["logits"]["rel_l2"] < 0.5


def test_int8_backbone_error_report(world, tmp_path):
    root, src = world
    r = run_tool("tools/export_onnx.py", str(src), "--model", "resnet18", "--out", str(tmp_path / "b.onnx"),
                 "--task", "backbone", "--img-size", "32", "--int8-calib", str(root / "train"), "--calib-size", "16",
                 "--crop-pct", "1.0", "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    _check_int8(tmp_path / "b.int8.onnx", 4)
    rep = json.loads((tmp_path / "r.json").read_text())["int8"]
    assert "top1_fp32" not in rep and rep["preprocessing"]["crop_pct"] == 1.0
    assert list(rep["error"]) == ["stage1", "stage2", "stage3", "stage4"]
    assert all(e["rel_l2"] < 0.2 for e in rep["error"].values()), rep["error"]
    assert "stage4 max abs" in r.stdout and "ratio int8/fp32" in r.stdout


def test_int8_errors(world, tmp_path):
    from common.io import UserError
    from export import quantize as q
    root, src = world
    r = run_main("tools/export_onnx.py", str(src), "--model", "resnet18", "--out", str(tmp_path / "x.onnx"),
                 "--img-size", "32", "--int8-calib", str(tmp_path / "missing"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: calibration folder not found: {tmp_path / 'missing'}"]
    assert not (tmp_path / "x.onnx").exists()  # checked before the export
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images in calibration folder"):
        q.list_images(tmp_path / "empty")
    with pytest.raises(UserError, match=f"has {NUM_CLASSES} class folders but the model has 10 classes"):
        q.val_dataset(root / "val", 10)
    with pytest.raises(UserError, match="--calib-size must be positive"):
        q.pick([root], 0)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="onnxruntime INT8 quantization of .* failed"):
        q.quantize(tmp_path / "bad.onnx", tmp_path / "bad.int8.onnx", q.list_images(root / "val")[:2],
                   q.eval_transform(nontrivial("resnet18"), 32)[0])
