"""DIST (Huang et al. NeurIPS 2022): inter-class and intra-class Pearson relations of the softmax outputs.

tau^2 * (beta * (1 - mean_i pearson(y_s[i], y_t[i])) + gamma * (1 - mean_c pearson(y_s[:, c], y_t[:, c]))).
The intra-class term correlates over the batch dimension, so it depends on the per-device batch size.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_loss


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@register_loss("dist")
class DISTLoss(nn.Module):
    is_logit_loss = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        tau = self.temperature
        y_s = (z_s.float() / tau).softmax(1)
        y_t = (z_t.float() / tau).softmax(1)
        inter = 1 - _pearson_rows(y_s, y_t).mean()
        intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()
        return tau * tau * (self.beta * inter + self.gamma * intra)
