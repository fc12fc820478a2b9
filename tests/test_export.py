"""ONNX export of classifiers and backbones, checked in onnxruntime against PyTorch."""
import onnx
import pytest
import torch

from conftest import run_main, run_tool
from export.onnx_export import build_module, export, verify
from helpers_models import nontrivial


@pytest.mark.parametrize("name", ["resnet18", "convnextv2_tiny"])
@pytest.mark.parametrize("task", ["classifier", "backbone"])
def test_export_matches_pytorch(tmp_path, name, task):
    m = nontrivial(name)
    module = build_module(name, m.state_dict(), task)
    path = export(module, tmp_path / "m.onnx", img_size=64)
    assert verify(module, path, img_size=64, batch_sizes=(1, 3)) < 1e-4
    model = onnx.load(str(path))
    outs = [o.name for o in model.graph.output]
    if task == "backbone":
        assert outs == ["stage1", "stage2", "stage3", "stage4"]
        import onnxruntime as ort
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": torch.randn(3, 3, 64, 64).numpy()})
        ref = m.forward_intermediates(torch.randn(3, 3, 64, 64), indices=4, intermediates_only=True)
        assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
        assert [64 // g.shape[-1] for g in got] == [4, 8, 16, 32]
    else:
        assert outs == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_cli_dynamic_size_and_errors(tmp_path):
    src = tmp_path / "s.pth"
    torch.save(nontrivial("resnet18").state_dict(), src)
    r = run_tool("tools/export_onnx.py", str(src), "--model", "resnet18", "--out", str(tmp_path / "a.onnx"),
                 "--task", "backbone", "--dynamic-size", "--img-size", "64", "--verify")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max abs diff" in r.stdout
    r = run_main("tools/export_onnx.py", str(src), "--model", "resnet50", "--out", str(tmp_path / "b.onnx"))
    assert r.returncode == 2 and "does not fit resnet50" in r.stderr and "Traceback" not in r.stderr


def test_vit_backbone_fixed_size_and_dynamic_size_error(tmp_path):
    """A ViT's tokens come out as four stride-16 maps; its patch grid is fixed, so --dynamic-size is refused."""
    import onnxruntime as ort
    import timm
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=5).eval()
    module = build_module("vit_tiny_patch16_224", m.state_dict(), "backbone", img_size=64)
    path = export(module, tmp_path / "vit.onnx", img_size=64)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["stage1", "stage2", "stage3", "stage4"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 64)
        with torch.no_grad():
            ref = m.forward_intermediates(x, indices=4, intermediates_only=True)
        got = sess.run(None, {"input": x.numpy()})
        assert [g.shape for g in got] == [tuple(r.shape) for r in ref] == [(b, 192, 4, 4)] * 4
        assert max(float(abs(g - r.numpy()).max()) for g, r in zip(got, ref)) < 1e-4

    src = tmp_path / "vit.pth"
    torch.save(m.state_dict(), src)
    # the classifier's grid is fixed too (the tool's --task backbone on a ViT is ViTDet's pyramid: test_vitdet.py)
    r = run_main("tools/export_onnx.py", str(src), "--model", "vit_tiny_patch16_224", "--out", str(tmp_path / "d.onnx"),
                 "--img-size", "64", "--dynamic-size")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    line, = r.stderr.strip().splitlines()
    assert line.startswith("error: --dynamic-size: the model does not run at 96x96") and "fixed patch grid" in line
    assert not (tmp_path / "d.onnx").exists() and not (tmp_path / "d.tmp.onnx").exists()
