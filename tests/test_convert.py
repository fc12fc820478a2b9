"""timm -> mmdet/mmpretrain conversion: equal stage outputs, clear errors, every checkpoint form."""
import pytest
import torch

from conftest import run_main, run_tool
from common.io import UserError
from helpers_models import nontrivial, nontrivial_mm
from transfer.convert import convert_checkpoint, convert_state_dict, get_arch, infer_model, read_student, verify


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet50", 64), ("resnet50d", 64),
                                       ("convnextv2_tiny", 64), ("convnext_atto", 64)])
def test_stage_outputs_match_timm(name, size):
    sd = nontrivial(name).state_dict()
    diffs = verify(sd, name, img_size=size)
    assert len(diffs) == 4 and max(diffs) < 1e-4, diffs
    assert infer_model(sd) == name


def test_loads_through_mmengine_pretrained_init(tmp_path):
    """The written file works with init_cfg=Pretrained(prefix='backbone.'): the path the configs use."""
    from mmengine.registry import MODELS
    import mmdet.models  # noqa: F401
    src = tmp_path / "student.pth"
    m = nontrivial("resnet18")
    torch.save({"state_dict": m.state_dict()}, src)
    convert_checkpoint(src, tmp_path / "bb.pth", "resnet18")
    bb = MODELS.build(dict(type="mmdet.ResNet", depth=18, out_indices=(0, 1, 2, 3),
                           init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "bb.pth"), prefix="backbone.")))
    bb.init_weights()
    bb.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m.forward_intermediates(x, indices=4, intermediates_only=True)
        out = bb(x)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, out)) < 1e-4


def test_grn_layout_of_original_release_is_reshaped():
    sd = nontrivial("convnextv2_atto").state_dict()
    orig = {k: (v.reshape(1, 1, 1, -1) if ".grn." in k else v) for k, v in sd.items()}
    out = convert_state_dict(orig, "convnextv2_atto")
    g = [k for k in out if k.endswith("grn.gamma")][0]
    assert out[g].ndim == 1 and out[g].abs().sum() > 0


def test_wrong_architecture_is_named(tmp_path):
    sd = nontrivial("resnet18").state_dict()
    with pytest.raises(UserError, match="does not fit resnet50.*missing"):
        convert_state_dict(sd, "resnet50")
    src = tmp_path / "r18.pth"
    torch.save(sd, src)
    r = run_main("tools/convert.py", str(src), str(tmp_path / "out.pth"), "--model", "resnet34")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: checkpoint does not fit resnet34")
    assert "Traceback" not in r.stderr and not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module", "run"])
def test_reads_every_checkpoint_form(tmp_path, wrap):
    sd = nontrivial("resnet18").state_dict()
    obj = {"plain": sd, "model": {"model": sd}, "state_dict": {"state_dict": sd, "epoch": 1},
           "module": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
           "run": {"version": 1, "epoch": 2, "settings": {"resnet18-kd": {"student": sd, "ema": []}}}}[wrap]
    torch.save(obj, tmp_path / "ck.pth")
    got = read_student(tmp_path / "ck.pth")
    assert got.keys() == sd.keys()
    model, dst = convert_checkpoint(tmp_path / "ck.pth", tmp_path / "bb.pth")
    out = torch.load(dst, weights_only=True)["state_dict"]
    assert model == "resnet18" and all(k.startswith("backbone.") for k in out)
    assert not any(k.startswith("backbone.fc.") for k in out)


def test_cli_verify(tmp_path):
    src = tmp_path / "s.pth"
    torch.save(nontrivial("resnet18").state_dict(), src)
    r = run_tool("tools/convert.py", str(src), str(tmp_path / "bb.pth"), "--verify", "--verify-size", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verified: max abs diff" in r.stdout


def test_cli_ema_takes_the_ema_weights_of_a_run_checkpoint(tmp_path):
    """last.pth holds the student and its EMA: --ema converts the EMA, the default the student."""
    student, ema = nontrivial("resnet18", seed=0).state_dict(), nontrivial("resnet18", seed=1).state_dict()
    torch.save({"version": 1, "epoch": 3, "settings": {"resnet18-kd": {"student": student, "ema": [ema]}}},
               tmp_path / "last.pth")
    for flag, expected in (([], student), (["--ema"], ema)):
        dst = tmp_path / f"bb{len(flag)}.pth"
        r = run_main("tools/convert.py", str(tmp_path / "last.pth"), str(dst), "--model", "resnet18", *flag)
        assert r.returncode == 0, r.stderr[-2000:]
        got = torch.load(dst, weights_only=True)["state_dict"]
        want = convert_state_dict(expected, "resnet18")
        assert got.keys() == {f"backbone.{k}" for k in want}
        for k, v in want.items():
            assert torch.equal(got[f"backbone.{k}"], v), k


# OpenMMLab forms, built with mmpretrain's (and mmdet's) own classes: (timm name, backbone config, feature width)
MMPRETRAIN = {
    "resnet18": (dict(type="ResNet", depth=18), 512),
    "resnet18d": (dict(type="ResNetV1d", depth=18), 512),
    "convnext_atto": (dict(type="ConvNeXt", arch="atto"), 320),
    "convnextv2_atto": (dict(type="ConvNeXt", arch="atto", use_grn=True, layer_scale_init_value=0.), 320),
}


def _mmpretrain_classifier(name):
    backbone, width = MMPRETRAIN[name]
    return nontrivial_mm(dict(type="ImageClassifier", backbone=backbone, neck=dict(type="GlobalAveragePooling"),
                              head=dict(type="LinearClsHead", num_classes=5, in_channels=width)))


def _outputs(cfg, x, weights=None):
    """Stage outputs of an mm backbone (strides 4..32; ConvNeXt: the last stage after norm3)."""
    m = nontrivial_mm(cfg)
    if weights is not None:
        m.load_state_dict(weights, strict=True)
    else:
        m.init_weights()
    m.eval()
    with torch.no_grad():
        return m(x)


@pytest.mark.parametrize("name", sorted(MMPRETRAIN))
def test_mmpretrain_classifier_is_read_verified_and_converted(tmp_path, name):
    """backbone.* + head.fc.* + meta: the architecture is inferred, timm agrees stage by stage, and the written
    backbone (loaded as the configs load it) gives the classifier's own backbone features."""
    clf = _mmpretrain_classifier(name)
    src = tmp_path / "mmpretrain.pth"
    torch.save({"meta": {"mmpretrain_version": "1.2.0", "dataset_meta": {"classes": list("abcde")}},
                "state_dict": clf.state_dict()}, src)
    sd = read_student(src)
    assert infer_model(sd) == name
    assert max(verify(sd, name, img_size=64)) < 1e-4
    model, dst = convert_checkpoint(src, tmp_path / "bb.pth")
    assert model == name
    convnext = name.startswith("convnext")
    same = dict(out_indices=(3,), gap_before_final_norm=False) if convnext else dict(out_indices=(0, 1, 2, 3))
    src_cfg = dict(MMPRETRAIN[name][0], **same)
    backbone_sd = {k[len("backbone."):]: v for k, v in clf.state_dict().items() if k.startswith("backbone.")}
    dst_cfg = dict(get_arch(name).mm_cfg, **same, init_cfg=dict(type="Pretrained", checkpoint=str(dst),
                                                                 prefix="backbone."))
    x = torch.randn(2, 3, 64, 64)
    ref, out = _outputs(src_cfg, x, backbone_sd), _outputs(dst_cfg, x)
    assert len(ref) == len(out) and max(float((a - b).abs().max()) for a, b in zip(ref, out)) < 1e-4


def test_cli_verifies_an_mmpretrain_classifier(tmp_path):
    src = tmp_path / "mmpretrain_r18.pth"
    torch.save({"meta": {}, "state_dict": _mmpretrain_classifier("resnet18d").state_dict()}, src)
    r = run_tool("tools/convert.py", str(src), str(tmp_path / "bb.pth"), "--verify", "--verify-size", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(resnet18d)" in r.stdout and "verified: max abs diff" in r.stdout


@pytest.mark.parametrize("name,cfg", [
    ("resnet18d", dict(type="mmdet.ResNetV1d", depth=18, out_indices=(0, 1, 2, 3))),  # mmdet's flat deep stem
    ("convnextv2_atto", dict(type="ConvNeXt", arch="atto", use_grn=True, layer_scale_init_value=0.,
                             out_indices=(0, 1, 2, 3), gap_before_final_norm=False)),  # norm0..norm3
])
def test_mmdet_backbone_passes_through_unchanged(tmp_path, name, cfg):
    bb = nontrivial_mm(cfg).state_dict()
    src = tmp_path / "backbone.pth"
    torch.save({"meta": {"from": "a detector"}, "state_dict": {f"backbone.{k}": v for k, v in bb.items()}}, src)
    r = run_tool("tools/convert.py", str(src), str(tmp_path / "out.pth"), "--verify", "--verify-size", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({name})" in r.stdout and "verified: max abs diff" in r.stdout
    out = torch.load(tmp_path / "out.pth", weights_only=True)["state_dict"]
    assert out.keys() == {f"backbone.{k}" for k in bb}
    assert all(torch.equal(out[f"backbone.{k}"], v) for k, v in bb.items())


def test_timm_checkpoint_saver_file(tmp_path):
    """timm's own training checkpoints (args as a Namespace, optimizer, EMA) are read safely; --ema takes the EMA."""
    import argparse
    from timm.utils import CheckpointSaver, ModelEmaV3
    m = nontrivial("resnet18", num_classes=5)
    ema = ModelEmaV3(nontrivial("resnet18", num_classes=5, seed=1))
    saver = CheckpointSaver(m, torch.optim.SGD(m.parameters(), lr=0.1), args=argparse.Namespace(model="resnet18"),
                            model_ema=ema, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), max_history=1)
    saver.save_checkpoint(0, metric=0.5)
    src = tmp_path / "last.pth.tar"
    assert src.is_file()
    got, got_ema = read_student(src), read_student(src, prefer_ema=True)
    assert all(torch.equal(got[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(got_ema[k], v) for k, v in ema.module.state_dict().items())
    r = run_tool("tools/convert.py", str(src), str(tmp_path / "bb.pth"), "--verify", "--verify-size", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verified: max abs diff" in r.stdout


def test_transfer_takes_an_mmpretrain_classifier(shapes_small, tmp_path):
    """tools/transfer.py --checkpoint path: the classifier's backbone is recognised, fits the R18 config, and
    backbone.pth holds its weights under mmdet's names."""
    from test_transfer import CFG, opts
    from transfer.finetune import prepare_config
    clf = _mmpretrain_classifier("resnet18")
    src = tmp_path / "mmpretrain_r18.pth"
    torch.save({"meta": {}, "state_dict": clf.state_dict()}, src)
    options = dict(x.split("=", 1) for x in opts(shapes_small["coco"], 1)[1:])
    cfg = prepare_config(CFG, src, work_dir=tmp_path / "wd", cfg_options=options)
    assert cfg.model.backbone.init_cfg.checkpoint == str(tmp_path / "wd" / "backbone.pth")
    written = torch.load(tmp_path / "wd" / "backbone.pth", weights_only=True)
    assert written["meta"]["timm_model"] == "resnet18"
    want = {k: v for k, v in clf.state_dict().items() if k.startswith("backbone.")}
    assert written["state_dict"].keys() == want.keys()
    assert all(torch.equal(written["state_dict"][k], v) for k, v in want.items())
