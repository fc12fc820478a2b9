"""Vanilla KD (Hinton et al. 2015): T^2 * KL(p_t || p_s) at temperature T, averaged over the batch."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_loss


@register_loss("kd")
class KDLoss(nn.Module):
    is_logit_loss = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        T = self.temperature
        log_p_s = F.log_softmax(z_s.float() / T, dim=1)
        log_p_t = F.log_softmax(z_t.float() / T, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T
