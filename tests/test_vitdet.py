"""The ViT students in a detector (transfer/vitdet.py, issue 27): ViTDet's backbone from the student's own timm
modules, checked against timm and a per-window reference; conversion of the files users hold; the configs'
layer-wise lr decay; a CPU-sized ViT-T Mask R-CNN trained, resumed, evaluated, reopened by mmdet's own
tools/test.py, and its pyramid exported to ONNX with dynamic height and width."""
import json
import sys

import pytest
import torch

from conftest import NO_WORKERS, ROOT, run_tool, tool_main
from helpers_layouts import deit_release, timm06_saver
from test_mmdet_tools import INSTALLED, mmdet_metrics, mmdet_tool

CPU_CFG = "configs/detection/cpu/mask-rcnn_vit-t_simple-fpn_shapes.py"
VIT_T = "vit_tiny_patch16_224"


def _student(seed: int = 0, num_classes: int = 5) -> torch.nn.Module:
    import timm
    torch.manual_seed(seed)
    m = timm.create_model(VIT_T, num_classes=num_classes)
    with torch.no_grad():  # trained-looking statistics: timm zero-initialises some biases and the class token
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def test_window_partition_inverts_and_tiles_like_slices():
    from transfer.vitdet import window_partition, window_unpartition
    x = torch.randn(2, 9, 11, 3)  # 9 x 11 patches, windows of 4: padded to 12 x 12, 9 windows
    w, padded = window_partition(x, 4)
    assert w.shape == (2 * 9, 16, 3) and padded == (12, 12)
    # window (row 1, column 2) of image 1 is the slice [4:8, 8:12] of the zero-padded map
    ref = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 3))[1, 4:8, 8:12].reshape(16, 3)
    assert torch.equal(w[9 + 1 * 3 + 2], ref)
    assert torch.equal(window_unpartition(w, 4, padded, (9, 11), 2), x)


def test_backbone_is_timm_with_global_attention_and_windows_change_it():
    """verify(): the all-global backbone with the class token equals timm's forward_intermediates; the windowed one
    equals the per-window reference. And the windows do something: the windowed map differs from the global one."""
    from transfer.convert import convert_state_dict, to_timm_layout, verify
    from transfer.vitdet import TimmViTDet
    m = _student()
    sd = to_timm_layout(m.state_dict(), VIT_T)
    assert max(verify(sd, VIT_T, img_size=224)) < 1e-4
    weights = convert_state_dict(sd, VIT_T)
    assert not any(k.startswith(("head.", "norm.")) for k in weights) and "blocks.11.mlp.fc2.weight" in weights
    windowed, glob = TimmViTDet(VIT_T, drop_path_rate=0.0).eval(), TimmViTDet(VIT_T, global_blocks=range(12),
                                                                                drop_path_rate=0.0).eval()
    windowed.load_state_dict(weights)
    glob.load_state_dict(weights)
    x = torch.randn(1, 3, 256, 320)  # a 16 x 20 grid: windows of 14 pad it
    with torch.no_grad():
        a, b = windowed(x)[0], glob(x)[0]
    assert a.shape == b.shape == (1, 192, 16, 20)
    assert (a - b).abs().max() > 1e-2
    with pytest.raises(ValueError, match="global attention in every block"):
        TimmViTDet(VIT_T, use_cls_token=True)


@pytest.mark.parametrize("layout", ["timm", "released", "deit", "hub"])
def test_convert_verify_on_the_files_users_hold(tmp_path, layout, capsys):
    """tools/convert.py SRC DST on a timm state dict and the paper's released file (timm 0.6 CheckpointSaver), both
    with --verify, a DeiT-style {'model': ...} and a timm hub folder; the architecture inferred where no --model is
    given; the written backbone holds the student's own tensors."""
    import timm
    main = tool_main("tools/convert.py")
    m = _student(num_classes=10)
    src = tmp_path / "student.pth"
    if layout == "timm":
        torch.save(m.state_dict(), src)
    elif layout == "released":
        torch.save(timm06_saver(VIT_T, m.state_dict(), m.state_dict()), src)
    elif layout == "deit":
        torch.save(deit_release(m.state_dict()), src)
    else:
        src = tmp_path / "hub"
        timm.models.save_for_hf(m, str(src))
    verify = layout in ("timm", "released")  # the others reach the same weights (checked below) by the same path
    argv = [str(src), str(tmp_path / "bb.pth")] + (["--verify"] if verify else []) + (
        ["--model", VIT_T] if layout == "timm" else [])
    main(argv)
    out = capsys.readouterr().out
    assert f"({VIT_T})" in out
    if verify:
        assert "verified: max abs diff" in out
        assert "last map, global attention vs timm" in out and "windowed (ViTDet) vs the per-window reference" in out
    bb = torch.load(tmp_path / "bb.pth", weights_only=True)
    assert bb["meta"]["timm_model"] == VIT_T
    assert torch.equal(bb["state_dict"]["backbone.blocks.3.attn.qkv.weight"], m.blocks[3].attn.qkv.weight)
    assert not any(k.startswith(("backbone.head", "backbone.norm.")) for k in bb["state_dict"])


def test_config_refuses_the_other_vit_and_decays_lr_by_layer(tmp_path):
    """A ViT-S student for the ViT-T config is refused in one line; the config's optimiser gives block i the lr
    scale 0.7 ** (12 - i), the embeddings 0.7 ** 13, the pyramid and heads the full lr, and no weight decay to
    norms and position embeddings (ViTDet's)."""
    import timm
    from mmengine.optim import build_optim_wrapper
    from mmdet.registry import MODELS

    from common.io import UserError
    from transfer.finetune import load_config, prepare_config
    src = tmp_path / "vit_s.pth"
    torch.save(timm.create_model("vit_small_patch16_224", num_classes=3).state_dict(), src)
    with pytest.raises(UserError, match="model=vit_tiny_patch16_224 but the checkpoint is vit_small_patch16_224"):
        prepare_config(ROOT / CPU_CFG, src, work_dir=tmp_path / "wd")

    from mmdet.utils import register_all_modules
    register_all_modules()
    import mmpretrain.models  # noqa: F401  (LN2d; with transfer.vitdet, what the config's custom_imports names)
    import transfer.vitdet  # noqa: F401
    cfg = load_config(ROOT / CPU_CFG)
    model = MODELS.build(cfg.model)
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    by_name = {g["param_name"]: g for g in groups}
    lr = cfg.optim_wrapper.optimizer.lr
    assert by_name["backbone.blocks.11.attn.qkv.weight"]["lr"] == pytest.approx(lr * 0.7)
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(lr * 0.7 ** 12)
    assert by_name["backbone.patch_embed.proj.weight"]["lr"] == pytest.approx(lr * 0.7 ** 13)
    assert by_name["neck.lateral_convs.0.conv.weight"]["lr"] == pytest.approx(lr)
    assert by_name["roi_head.bbox_head.fc_cls.weight"]["lr"] == pytest.approx(lr)
    assert by_name["backbone.pos_embed"]["weight_decay"] == 0 and by_name["backbone.blocks.0.norm1.weight"][
        "weight_decay"] == 0
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == pytest.approx(0.1)
    assert "backbone.cls_token" not in by_name  # ViTDet drops it: frozen, never trained


@pytest.mark.slow
def test_vit_t_detector_trains_resumes_tests_and_exports(shapes_small, tmp_path):
    """The CPU ViT-T Mask R-CNN from a student: an epoch, CocoMetric, a resumed second epoch, mmdet's own
    tools/test.py on the work dir, and the detector's pyramid in ONNX at two sizes."""
    student = tmp_path / "student.pth"
    torch.save(_student().state_dict(), student)
    wd, coco = tmp_path / "det", shapes_small["coco"]
    opts = ["--cfg-options", *NO_WORKERS]
    r = run_tool("tools/transfer.py", CPU_CFG, "--checkpoint", str(student), "--work-dir", str(wd),
                 "--data-root", str(coco), *opts, "train_cfg.max_epochs=1", "train_cfg.val_interval=1")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((wd / "results.json").read_text())
    assert set(res["bbox"]) == {"mAP", "AP50", "AP75", "APs", "APm", "APl"} and res["epoch"] == 1
    ck = torch.load(wd / "epoch_1.pth", weights_only=True)
    assert "backbone.blocks.11.mlp.fc2.weight" in ck["state_dict"] and "neck.fpn_convs.3.conv.weight" in ck[
        "state_dict"]

    r = run_tool("tools/transfer.py", CPU_CFG, "--resume", "--work-dir", str(wd), "--data-root", str(coco), *opts,
                 "train_cfg.max_epochs=2", "train_cfg.val_interval=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed epoch: 1" in r.stdout + r.stderr
    assert json.loads((wd / "results.json").read_text())["epoch"] == 2

    saved = wd / "mask-rcnn_vit-t_simple-fpn_shapes.py"
    r = run_tool(mmdet_tool("test.py"), str(saved), str(wd / "epoch_2.pth"), "--work-dir", str(tmp_path / "mmt"),
                 env=INSTALLED, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert set(mmdet_metrics(out)) == {"bbox_mAP", "segm_mAP"} or "results of the whole dataset is empty" in out

    export = tool_main("tools/export_onnx.py")
    rep = export([str(wd / "epoch_2.pth"), "--model", VIT_T, "--task", "backbone", "--img-size", "96", "128",
                  "--out", str(tmp_path / "pyr.onnx"), "--verify"])
    assert rep["max_abs_diff"] <= 1e-3 and rep["sizes_checked"] == [[96, 128], [128, 64]]
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "pyr.onnx"), providers=["CPUExecutionProvider"])
    shapes = [o.shape for o in sess.run(None, {"input": torch.randn(2, 3, 160, 224).numpy()})]
    assert shapes == [(2, 64, 40, 56), (2, 64, 20, 28), (2, 64, 10, 14), (2, 64, 5, 7)]  # strides 4, 8, 16, 32


def test_student_pyramid_export_says_the_pyramid_is_untrained(tmp_path, capsys):
    export = tool_main("tools/export_onnx.py")
    src = tmp_path / "s.pth"
    torch.save(_student().state_dict(), src)
    rep = export([str(src), "--model", VIT_T, "--task", "backbone", "--img-size", "64", "96",
                  "--out", str(tmp_path / "p.onnx"), "--verify"])
    out = capsys.readouterr().out
    assert "the pyramid's layers are untrained" in out and "height and width dynamic" in out
    assert rep["max_abs_diff"] <= 1e-3
    with pytest.raises(SystemExit) as e:
        export([str(src), "--model", VIT_T, "--task", "backbone", "--img-size", "70", "96", "--out",
                str(tmp_path / "q.onnx")])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == (
        "error: --img-size 70 96: a detection pyramid takes multiples of 32")
    assert not (tmp_path / "q.onnx").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
