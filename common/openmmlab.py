"""OpenMMLab checkpoints (mmpretrain classifiers, mmdet detectors and backbones) read back with timm's key names,
and ``read_student``, the general "read the user's weights" function.

Why in common/: exporting, CKA and fine-tuning all take a user's weights in any of these forms; the detection
package (transfer/) writes mmdet backbones but is not needed to read them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from common.weights import read_state_dict

# Keys of KD helpers (embeddings, ABFs, memories) that a wrapped distiller may carry; the classifier is
# dropped by each architecture's renaming.
KD_HELPERS = re.compile(r"^(kd_loss\.|kd_helpers\.|distiller\.|teacher\.)")

# OpenMMLab -> timm key renaming (the inverse of transfer/convert.py's maps). mmpretrain's deep stem is three
# ConvModules (stem.i.conv / stem.i.bn), mmdet's a flat Sequential (stem.0, 1, 3, 4, 6, 7).
MMPRETRAIN_STEM = {"stem.0.conv.": "conv1.0.", "stem.0.bn.": "conv1.1.", "stem.1.conv.": "conv1.3.",
                   "stem.1.bn.": "conv1.4.", "stem.2.conv.": "conv1.6.", "stem.2.bn.": "bn1."}
MMDET_STEM = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
              "stem.6.": "conv1.6.", "stem.7.": "bn1."}


def mm_resnet_to_timm(k: str) -> str:
    for table in (MMPRETRAIN_STEM, MMDET_STEM):
        for a, b in table.items():
            if k.startswith(a):
                return b + k[len(a):]
    return k


def mm_convnext_to_timm(k: str) -> str:
    k = re.sub(r"^downsample_layers\.0\.([01])\.", r"stem.\1.", k)
    k = re.sub(r"^downsample_layers\.(\d)\.([01])\.", r"stages.\1.downsample.\2.", k)
    k = re.sub(r"^stages\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2.", k)
    k = k.replace(".depthwise_conv.", ".conv_dw.").replace(".pointwise_conv1.", ".mlp.fc1.")
    k = k.replace(".pointwise_conv2.", ".mlp.fc2.").replace(".grn.gamma", ".mlp.grn.weight")
    k = k.replace(".grn.beta", ".mlp.grn.bias")
    return re.sub(r"^norm3\.", "head.norm.", k)


def is_openmmlab(sd: Mapping[str, torch.Tensor]) -> bool:
    """An mmpretrain classifier, mmdet detector or backbone file: its weights live under ``backbone.``."""
    return any(k.startswith("backbone.") for k in sd)


def openmmlab_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``backbone.*`` of an OpenMMLab checkpoint with timm's key names (head/neck/detector parts dropped)."""
    bb = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    rename = mm_convnext_to_timm if any(k.startswith("downsample_layers.") for k in bb) else mm_resnet_to_timm
    return {rename(k): v for k, v in bb.items()}


def read_student(src: str | Path, allow_pickle: bool = False, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Weights from any file common.weights reads (our run files, timm checkpoints of every form, .safetensors, a
    hub folder, a model's original layout), or an OpenMMLab classifier/backbone/detector file (its ``backbone.*``,
    renamed to timm's keys). Original layouts are mapped later, by ``to_timm_layout`` once the model is known."""
    sd = read_state_dict(src, allow_pickle, prefer_ema)
    if is_openmmlab(sd):
        return openmmlab_to_timm(sd)
    return {k: v for k, v in sd.items() if not KD_HELPERS.match(k)}
