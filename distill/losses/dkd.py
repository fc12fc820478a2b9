"""Decoupled KD (Zhao et al. CVPR 2022): alpha * TCKD + beta * NCKD, each scaled by T^2.

TCKD is the KL between binary [p_gt, 1 - p_gt] distributions; NCKD the KL over the non-target classes.
Under mixup/cutmix the target is a soft vector: the official code takes its argmax, and so do we.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_loss


def hard_target(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(dim=1) if target.ndim == 2 else target


@register_loss("dkd")
class DKDLoss(nn.Module):
    is_logit_loss = True

    def __init__(self, alpha: float = 1.0, beta: float = 2.0, temperature: float = 1.0):
        super().__init__()
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        T = self.temperature
        gt = F.one_hot(hard_target(target), z_s.shape[1]).bool()
        z_s, z_t = z_s.float() / T, z_t.float() / T
        p_s, p_t = z_s.softmax(1), z_t.softmax(1)
        # target-class KD on the binary (target, rest) distributions
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1).clamp_min(1e-12)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1).clamp_min(1e-12)
        tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * T * T
        # non-target KD: the target logit is pushed out of both softmaxes
        mask = gt * 1000.0
        nckd = F.kl_div(F.log_softmax(z_s - mask, 1), F.log_softmax(z_t - mask, 1),
                        reduction="batchmean", log_target=True) * T * T
        return self.alpha * tckd + self.beta * nckd
