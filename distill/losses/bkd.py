"""Binary KD (the paper's Table 4 ablation): BCE-with-logits of the student against softmax(teacher)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_loss


@register_loss("bkd")
class BinaryKDLoss(nn.Module):
    is_logit_loss = True

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(z_s.float(), z_t.float().softmax(dim=1))
