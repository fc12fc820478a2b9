"""Relational KD (RKD, Park et al. CVPR 2019) on the pooled pre-logit features, as in the official VanillaKD code.

distance term: pairwise Euclidean distances of the batch, each side divided by its mean positive
distance, compared with smooth-L1 (weight 25). Angle term: cosines of the angles formed by every
triplet, ``<n(x_j - x_i), n(x_k - x_i)>`` with ``n`` the L2-normalisation, smooth-L1 (weight 50).
The teacher side carries no gradient. No learnable helpers.

Memory: the angle term builds a B x B x D tensor of pairwise differences per side (the official
formulation), so a batch of 256 with D = 2048 costs ~0.5 GB in float32 per side, plus its graph.
The maths runs in float32 with autocast off: half-precision distances lose the small ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..features import Features
from .hint import HintLoss
from .registry import register_loss


def _pdist(e: torch.Tensor, squared: bool, eps: float) -> torch.Tensor:
    """Pairwise distances with a zero diagonal (clamped at eps so sqrt has a gradient)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    d = d.clone()
    d[range(len(e)), range(len(e))] = 0
    return d


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = e.unsqueeze(0) - e.unsqueeze(1)                  # diff[i, j] = e_j - e_i
    n = F.normalize(diff, p=2, dim=2)
    return torch.bmm(n, n.transpose(1, 2)).reshape(-1)      # B x B x B cosines at vertex i


@register_loss("rkd")
class RKDLoss(HintLoss):
    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, eps: float = 1e-12,
                 squared: bool = False):
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.eps, self.squared = eps, squared

    def forward(self, s: Features, t: Features, target: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device_type=s.pre_logits.device.type, enabled=False):
            stu = s.pre_logits.flatten(1).float()
            tea = t.pre_logits.flatten(1).float().detach()
            if stu.shape[0] < 2:  # no pair to relate: a zero on the student's graph
                return stu.sum() * 0.0
            with torch.no_grad():
                t_d = _pdist(tea, self.squared, self.eps)
                t_d = t_d / t_d[t_d > 0].mean()
                t_angle = _angles(tea)
            d = _pdist(stu, self.squared, self.eps)
            d = d / d[d > 0].mean()
            loss_d = F.smooth_l1_loss(d, t_d)
            loss_a = F.smooth_l1_loss(_angles(stu), t_angle)
            return self.distance_weight * loss_d + self.angle_weight * loss_a
