"""A ViT's detection pyramid for ONNX (``tools/export_onnx.py --task backbone`` on a ViT).

A plain ViT has one map (stride 16); detectors take ViTDet's simple feature pyramid over it (strides 4, 8, 16,
32: transfer/vitdet.py). The exported graph is that backbone and pyramid, with height and width dynamic: the
position embeddings are resampled inside the graph (timm's ``resample_abs_pos_embed``) and the windows are
padded there, so one file serves every detection size (multiples of 32). torch.export (the dynamo exporter)
traces it, because the legacy exporter has no ONNX form for timm's antialiased bicubic resampling.

Two sources: a fine-tuned detector's checkpoint (a work dir's ``iter_*.pth`` / ``epoch_*.pth``), whose own
config (saved by mmengine in its ``meta``) builds the backbone and the trained pyramid; or a distilled student,
whose blocks go into ViTDet's backbone while the pyramid, which a classifier never had, starts from its
initialisation (said in one line: such a file is for deployment rehearsal, not for detection).

Exporting a detection pyramid needs the detection modules, so this file imports transfer.vitdet (the one
place export/ reaches into transfer/).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from common.io import UserError, key_mismatch

PYRAMID_STRIDES = (4, 8, 16, 32)


def is_plain_vit(model: str) -> bool:
    """timm's plain ViTs with 16-pixel patches: the models transfer/vitdet.py turns into ViTDet backbones."""
    return re.fullmatch(r"vit_(tiny|small|base|large)_patch16_\d+(\.\w+)?", model) is not None


class DetectionPyramid(nn.Module):
    """image -> the four pyramid maps (strides 4, 8, 16, 32) that the detector's heads read."""

    dynamo_export = True  # export/onnx_export.py: torch.export with dynamic batch, height and width

    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.neck(self.backbone(x))[:len(PYRAMID_STRIDES)])


def detector_config(checkpoint: Mapping) -> str | None:
    """The config text mmengine saves in a checkpoint's meta, when the file holds a detector with a neck."""
    meta, sd = checkpoint.get("meta"), checkpoint.get("state_dict")
    if isinstance(meta, Mapping) and isinstance(meta.get("cfg"), str) and isinstance(sd, Mapping) \
            and any(k.startswith("neck.") for k in sd):
        return meta["cfg"]
    return None


def from_detector(cfg_text: str, state_dict: Mapping[str, torch.Tensor], model: str) -> DetectionPyramid:
    """Backbone and pyramid as the detector's own config builds them, with its trained weights (strict)."""
    import importlib

    from mmengine.config import Config
    from mmdet.registry import MODELS
    cfg = Config.fromstring(cfg_text, ".py")
    for name in (cfg.get("custom_imports") or {}).get("imports", []):
        importlib.import_module(name)
    bb_cfg, neck_cfg = dict(cfg.model.backbone, init_cfg=None), dict(cfg.model.neck, init_cfg=None)
    if str(bb_cfg.get("type", "")).split(".")[-1] != "TimmViTDet":
        raise UserError(f"the checkpoint's detector has a {bb_cfg.get('type')} backbone, not a ViT (TimmViTDet)")
    if bb_cfg.get("model", "").split(".")[0] != model.split(".")[0]:
        raise UserError(f"the checkpoint's detector holds {bb_cfg.get('model')}, not {model} (--model)")
    bb_cfg["drop_path_rate"] = 0.0
    pyramid = DetectionPyramid(MODELS.build(bb_cfg), MODELS.build(neck_cfg))
    weights = {k: v for k, v in state_dict.items() if k.startswith(("backbone.", "neck."))}
    problem = key_mismatch(pyramid.state_dict(), weights)
    if problem:
        raise UserError(f"the detector checkpoint does not fit its own config's backbone and neck: {problem}")
    pyramid.load_state_dict(weights, strict=True)
    return pyramid.eval()


def from_student(model: str, state_dict: Mapping[str, torch.Tensor] | None, out_channels: int = 256,
                 seed: int = 0) -> DetectionPyramid:
    """ViTDet's backbone (windows of 14, global blocks 2/5/8/11) with the student's blocks; the pyramid's layers
    at their initialisation (seeded, so the same student gives the same file)."""
    from transfer.vitdet import SimpleFeaturePyramid, TimmViTDet
    backbone = TimmViTDet(model, drop_path_rate=0.0)
    if state_dict is not None:
        own = backbone.state_dict()
        weights = {k: v for k, v in state_dict.items() if k in own}
        problem = key_mismatch(own, weights)
        if problem:
            raise UserError(f"checkpoint does not fit {model}: {problem}")
        backbone.load_state_dict(weights, strict=True)
    torch.manual_seed(seed)
    neck = SimpleFeaturePyramid(backbone.embed_dim, out_channels, num_outs=len(PYRAMID_STRIDES))
    return DetectionPyramid(backbone, neck).eval()


def build_pyramid(src: str | Path, model: str, student: Callable[[], Mapping[str, torch.Tensor] | None],
                  allow_pickle: bool = False) -> DetectionPyramid:
    """The pyramid from a detector checkpoint when SRC is one, else from ``student()``, the student's weights in
    timm's layout (one line says the pyramid is untrained then)."""
    from common.io import load_checkpoint
    raw = load_checkpoint(src, allow_pickle) if Path(src).is_file() and str(src).endswith((".pth", ".pt")) else {}
    cfg_text = detector_config(raw) if isinstance(raw, Mapping) else None
    if cfg_text is not None:
        print(f"{src}: a fine-tuned detector: its backbone and trained pyramid, built from its own config")
        return from_detector(cfg_text, raw["state_dict"], model)
    print(f"{src}: a student: its blocks in ViTDet's backbone; the pyramid's layers are untrained (a classifier has "
          "none): export a fine-tuned detector's checkpoint for a pyramid to detect with")
    return from_student(model, student())
