"""Correlation congruence (CC, Peng et al. ICCV 2019), in the form the official VanillaKD code trains it.

Both pooled pre-logit vectors go through a learnable linear embedding to ``feat_dim`` (128); with
``d = e_s - e_t`` the loss is ``scale * mean_i sum_j |d_i,j| * |d_i+1,j|`` over consecutive sample pairs
(i, i+1), scale = 0.02. This is what ``losses/correlation.py`` of Hao840/vanillaKD computes; it is not the
kernelised correlation matrix of the CC paper (Peng et al., ICCV 2019).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..features import Features, FeatureShapes
from .hint import HintLoss
from .registry import register_loss


@register_loss("cc")
class CCLoss(HintLoss):
    def __init__(self, feat_dim: int = 128, scale: float = 0.02):
        super().__init__()
        self.feat_dim, self.scale = feat_dim, scale
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None

    def setup(self, student: FeatureShapes, teacher: FeatureShapes, num_samples: int) -> None:
        """Embeddings from the student's and the teacher's pre-logit widths to ``feat_dim``."""
        self.embed_s = nn.Linear(student.pre_logits, self.feat_dim)
        self.embed_t = nn.Linear(teacher.pre_logits, self.feat_dim)

    def forward(self, s: Features, t: Features, target: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError("CCLoss.setup() must run before forward()")
        f_s = s.pre_logits.flatten(1)
        f_t = t.pre_logits.flatten(1)
        e_s = self.embed_s(f_s.to(self.embed_s.weight.dtype)).float()
        e_t = self.embed_t(f_t.to(self.embed_t.weight.dtype)).float()
        delta = (e_s - e_t).abs()
        if delta.shape[0] < 2:  # no consecutive pair: a zero that still reaches the helpers' graph
            return delta.sum() * 0.0
        return self.scale * (delta[:-1] * delta[1:]).sum(1).mean()
