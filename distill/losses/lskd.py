"""LS-KD: vanilla KD on standardised logits (Sun et al., "Logit Standardization in Knowledge Distillation",
CVPR 2024).

Each sample's logits are z-scored before the temperature, ``(z - mean(z)) / (std(z) + 1e-7)``, for student and
teacher alike, so the student matches the teacher's *relations* between classes rather than the scale of its
logits; then T^2 * KL(softmax(z_t'/T) || softmax(z_s'/T)) averaged over the batch, as KD. The std is torch's
default (unbiased, K - 1), as the authors' released ``normalize``; their paper's formula divides by K.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_loss


def standardize(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score of a (N, C) logit matrix."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


@register_loss("lskd")
class LSKDLoss(nn.Module):
    is_logit_loss = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        T = self.temperature
        log_p_s = F.log_softmax(standardize(z_s.float()) / T, dim=1)
        log_p_t = F.log_softmax(standardize(z_t.float()) / T, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T
