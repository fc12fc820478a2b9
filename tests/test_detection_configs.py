"""The paper's detection configs (Table 11 and the official repository's mmdet 2.x configs) resolve to the paper's settings and build in mmdet 3.x.

Only configs are loaded and models constructed (no COCO, no training): SyncBN modules construct on CPU
without a process group. The CPU Cascade config for the shapes set also runs one loss and one predict step.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DET = ROOT / "configs" / "detection"

R50 = dict(family="r50", batch=4, total_batch=32, optim="SGD", lr=0.04, wd=1e-4, warmup=500)
CNX = dict(family="convnext", batch=2, total_batch=16, optim="AdamW", wd=0.05, warmup=1000)
SCHED = {"1x": (12, [8, 11]), "2x": (24, [16, 22]), "3x": (36, [27, 33])}
PAPER = {  # config -> expected settings
    "mask-rcnn_r50_fpn_1x_coco.py": dict(R50, detector="MaskRCNN", sched="1x"),
    "mask-rcnn_r50_fpn_2x_coco.py": dict(R50, detector="MaskRCNN", sched="2x"),
    "cascade-mask-rcnn_r50_fpn_1x_coco.py": dict(R50, detector="CascadeRCNN", sched="1x"),
    "cascade-mask-rcnn_r50_fpn_2x_coco.py": dict(R50, detector="CascadeRCNN", sched="2x"),
    "mask-rcnn_convnextv2-t_fpn_1x_coco.py": dict(CNX, detector="MaskRCNN", sched="1x", lr=1e-4, decay=0.95),
    "mask-rcnn_convnextv2-t_fpn_3x_coco.py": dict(CNX, detector="MaskRCNN", sched="3x", lr=1e-4, decay=0.95),
    "cascade-mask-rcnn_convnextv2-t_fpn_1x_coco.py": dict(CNX, detector="CascadeRCNN", sched="1x", lr=2e-4,
                                                          decay=0.7),
    "cascade-mask-rcnn_convnextv2-t_fpn_3x_coco.py": dict(CNX, detector="CascadeRCNN", sched="3x", lr=2e-4,
                                                          decay=0.7),
}


@functools.lru_cache(maxsize=None)
def _registered() -> None:
    from mmdet.utils import register_all_modules
    register_all_modules()
    import mmpretrain.models  # noqa: F401  (mmpretrain.ConvNeXt)


def load(name: str):
    from mmengine.config import Config
    _registered()
    return Config.fromfile(str(DET / name))


@functools.lru_cache(maxsize=None)
def build(name: str) -> torch.nn.Module:
    from mmdet.registry import MODELS
    cfg = load(name)
    model = MODELS.build(cfg.model)
    return model


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_settings(name):
    want = PAPER[name]
    cfg = load(name)
    epochs, milestones = SCHED[want["sched"]]
    # schedule
    assert cfg.train_cfg.type == "EpochBasedTrainLoop" and cfg.train_cfg.max_epochs == epochs
    warm, steps = cfg.param_scheduler
    assert warm.type == "LinearLR" and not warm.by_epoch and (warm.begin, warm.end) == (0, want["warmup"])
    assert warm.start_factor == 0.001
    assert steps.type == "MultiStepLR" and steps.by_epoch and steps.milestones == milestones
    assert steps.end == epochs and steps.gamma == 0.1
    # optimizer
    ow = cfg.optim_wrapper
    assert ow.optimizer.type == want["optim"]
    assert ow.optimizer.lr == pytest.approx(want["lr"]) and ow.optimizer.weight_decay == pytest.approx(want["wd"])
    if want["family"] == "r50":
        assert ow.type == "OptimWrapper" and ow.optimizer.momentum == 0.9
        assert "constructor" not in ow and "paramwise_cfg" not in ow
    else:
        assert ow.type == "AmpOptimWrapper"
        assert ow.constructor == "LearningRateDecayOptimizerConstructor"
        assert dict(ow.paramwise_cfg) == dict(decay_rate=want["decay"], decay_type="layer_wise", num_layers=6)
        assert tuple(ow.optimizer.betas) == (0.9, 0.999)
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=want["total_batch"])
    assert cfg.train_dataloader.batch_size == want["batch"]
    assert want["batch"] * 8 == want["total_batch"]
    # model
    m = cfg.model
    assert m.type == want["detector"]
    bb = m.backbone
    assert bb.init_cfg is None  # tools/transfer.py points it at the converted student
    if want["family"] == "r50":
        assert bb.type == "ResNet" and bb.depth == 50 and bb.style == "pytorch"
        assert bb.norm_cfg == dict(type="SyncBN", requires_grad=True)
        assert bb.norm_eval is False and bb.frozen_stages == 1
        assert m.neck.in_channels == [256, 512, 1024, 2048]
    else:
        assert bb.type == "mmpretrain.ConvNeXt" and bb.arch == "tiny"
        assert bb.use_grn is True and bb.layer_scale_init_value == 0 and bb.drop_path_rate == 0.4
        assert tuple(bb.out_indices) == (0, 1, 2, 3) and bb.gap_before_final_norm is False
        assert m.neck.in_channels == [96, 192, 384, 768]
        assert "mmpretrain.models" in cfg.custom_imports.imports
    if want["detector"] == "CascadeRCNN":
        heads = m.roi_head.bbox_head
        assert m.roi_head.num_stages == 3 and len(heads) == 3
        for h in heads:
            if want["family"] == "convnext":
                assert h.type == "ConvFCBBoxHead" and (h.num_shared_convs, h.num_shared_fcs) == (4, 1)
                assert h.norm_cfg == dict(type="SyncBN", requires_grad=True)
                assert h.loss_bbox == dict(type="GIoULoss", loss_weight=10.0) and h.reg_decoded_bbox is True
            else:
                assert h.type == "Shared2FCBBoxHead"
    # data and evaluation
    for dl in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert dl.dataset.type == "CocoDataset" and dl.dataset.data_root == "data/coco/"
        assert "metainfo" not in dl.dataset  # the 80 COCO classes
    for ev in (cfg.val_evaluator, cfg.test_evaluator):
        assert ev.type == "CocoMetric" and list(ev.metric) == ["bbox", "segm"]
        assert ev.ann_file == "data/coco/annotations/instances_val2017.json"
    pipe = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    assert "RandomFlip" in pipe
    if want["family"] == "r50":
        resize = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == "Resize")
        assert tuple(resize.scale) == (1333, 800) and resize.keep_ratio
    else:  # DETR-style multi-scale + crop
        choice = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomChoice")
        assert [[t.type for t in branch] for branch in choice.transforms] == [
            ["RandomChoiceResize"], ["RandomChoiceResize", "RandomCrop", "RandomChoiceResize"]]
    test_resize = next(t for t in cfg.test_dataloader.dataset.pipeline if t.type == "Resize")
    assert tuple(test_resize.scale) == (1333, 800)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_builds(name):
    from mmpretrain.models.backbones import ConvNeXt
    want = PAPER[name]
    model = build(name)
    assert type(model).__name__ == want["detector"]
    if want["family"] == "r50":
        norms = [mod for mod in model.backbone.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(n, torch.nn.SyncBatchNorm) for n in norms)
        assert not any(p.requires_grad for p in model.backbone.layer1.parameters())  # frozen_stages=1
        assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    else:
        assert isinstance(model.backbone, ConvNeXt)
        assert model.backbone.stages[0][0].grn is not None  # ConvNeXt V2
        assert not any("gamma" == n.split(".")[-1] for n, _ in model.backbone.stages.named_parameters()
                       if ".grn." not in n)  # no layer scale
    if want["detector"] == "CascadeRCNN":
        assert len(model.roi_head.bbox_head) == 3
    model.eval()
    with torch.no_grad():  # backbone -> FPN channels fit
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256] * 5
    # the converter's architecture check accepts the paper's students for these backbones
    from transfer.finetune import _check_backbone_fits
    _check_backbone_fits(load(name).model.backbone, "resnet50" if want["family"] == "r50" else "convnextv2_tiny")


def _group_of(wrapper, param_name: str) -> dict:
    for g in wrapper.optimizer.param_groups:
        if param_name in g.get("param_names", []):
            return g
    raise KeyError(param_name)


@pytest.mark.parametrize("name", ["mask-rcnn_convnextv2-t_fpn_1x_coco.py",
                                  "cascade-mask-rcnn_convnextv2-t_fpn_1x_coco.py"])
def test_layer_wise_lr_decay(name):
    """mmdet's LearningRateDecayOptimizerConstructor maps mmpretrain ConvNeXt names to 8 lr levels."""
    from mmengine.optim import build_optim_wrapper
    cfg = load(name)
    want = PAPER[name]
    # the constructor only reads parameter names and the backbone's class: the Mask R-CNN model serves both
    model = build("mask-rcnn_convnextv2-t_fpn_1x_coco.py")
    ow_cfg = cfg.optim_wrapper.copy()
    ow_cfg.type = "OptimWrapper"  # AmpOptimWrapper asserts a GPU
    ow_cfg.pop("loss_scale", None)
    wrapper = build_optim_wrapper(model, ow_cfg)
    lr, d = want["lr"], want["decay"]
    expect = {  # parameter -> lr scale = decay ** (num_layers + 1 - layer_id)
        "backbone.downsample_layers.0.0.weight": d ** 7,  # stem
        "backbone.stages.0.0.pointwise_conv1.weight": d ** 6,
        "backbone.stages.1.2.depthwise_conv.weight": d ** 5,
        "backbone.stages.2.0.depthwise_conv.weight": d ** 4,
        "backbone.stages.2.8.pointwise_conv2.weight": d ** 2,
        "backbone.stages.3.2.pointwise_conv1.weight": d ** 1,
        "neck.lateral_convs.0.conv.weight": 1.0,
        "rpn_head.rpn_conv.weight": 1.0,
    }
    for pname, scale in expect.items():
        assert _group_of(wrapper, pname)["lr"] == pytest.approx(lr * scale), pname
    early = _group_of(wrapper, "backbone.downsample_layers.0.0.weight")["lr"]
    late = _group_of(wrapper, "backbone.stages.3.2.pointwise_conv1.weight")["lr"]
    assert early < late < lr
    # no weight decay on norms, biases and GRN; wd 0.05 on conv/linear weights
    assert _group_of(wrapper, "backbone.stages.1.0.grn.gamma")["weight_decay"] == 0
    assert _group_of(wrapper, "backbone.stages.1.0.norm.weight")["weight_decay"] == 0
    assert _group_of(wrapper, "backbone.stages.1.0.pointwise_conv1.weight")["weight_decay"] == pytest.approx(0.05)
    n_params = sum(len(g["params"]) for g in wrapper.optimizer.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)


def test_cpu_cascade_config_trains_and_predicts():
    """The CPU Cascade config for the shapes set: one loss step (all 3 stages + masks) and one prediction."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.config import Config
    _registered()
    cfg = Config.fromfile(str(DET / "cpu" / "cascade-mask-rcnn_r18_fpn_shapes.py"))
    assert cfg.model.type == "CascadeRCNN" and cfg.model.roi_head.num_stages == 3
    assert [h.fc_out_channels for h in cfg.model.roi_head.bbox_head] == [256] * 3
    assert [r.sampler.num for r in cfg.model.train_cfg.rcnn] == [64] * 3  # 3 x 64: the Mask R-CNN config's speed
    assert [r.assigner.pos_iou_thr for r in cfg.model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    base = Config.fromfile(str(DET / "cpu" / "mask-rcnn_r18_fpn_shapes.py"))
    for key in ("backbone", "neck", "rpn_head", "data_preprocessor"):  # inherited from the Mask R-CNN CPU config
        assert cfg.model[key] == base.model[key], key
    assert cfg.model.train_cfg.rpn == base.model.train_cfg.rpn and cfg.model.test_cfg == base.model.test_cfg
    assert cfg.model.roi_head.mask_head.num_classes == base.model.roi_head.mask_head.num_classes
    assert cfg.model.roi_head.bbox_roi_extractor.out_channels == base.model.neck.out_channels
    for key in ("train_dataloader", "val_evaluator", "param_scheduler", "optim_wrapper", "train_cfg"):
        assert cfg[key] == base[key], key
    cfg.model.test_cfg.rcnn.max_per_img = 10  # an untrained model: keep prediction cheap
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 128)] * 2, num_items=[3, 2], num_classes=5,
                            with_mask=True)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode="loss")
    for s in range(3):
        assert f"s{s}.loss_cls" in losses and f"s{s}.loss_bbox" in losses and f"s{s}.loss_mask" in losses
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(**model.data_preprocessor(packed, False), mode="predict")
    assert len(out) == 2 and hasattr(out[0].pred_instances, "masks")
