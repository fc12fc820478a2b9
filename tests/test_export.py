"""ONNX export of classifiers and backbones, checked in onnxruntime against PyTorch."""
import onnx
import pytest
import torch

from conftest import run_tool
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
    r = run_tool("tools/export_onnx.py", str(src), "--model", "resnet50", "--out", str(tmp_path / "b.onnx"))
    assert r.returncode == 2 and "does not fit the model" in r.stderr and "Traceback" not in r.stderr
