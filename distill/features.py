"""What a model shows a KD method besides its logits: the pooled pre-logits and the last four stage maps, from timm's
``forward_intermediates()`` (distill/distiller.py ``extract``), and their shapes at the training size (what a hint
loss builds its helpers from). The teacher wrapper, the evaluation and every loss share these types."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    logits: torch.Tensor                 # (B, num_classes)
    pre_logits: torch.Tensor | None      # (B, D)
    stages: list[torch.Tensor] | None    # four (B, C_i, H_i, W_i) maps, strides 4/8/16/32 for CNNs


@dataclass
class FeatureShapes:
    pre_logits: int                          # D
    stages: list[tuple[int, int, int]]       # (C_i, H_i, W_i) at the training image size
