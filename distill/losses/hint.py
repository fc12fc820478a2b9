"""The contract the engine drives a hint-based (feature) KD method by.

What it sees (distill/features.py) comes from timm's ``forward_intermediates()`` (never patched forwards): ``stages`` are the last four
feature maps (``indices=4``: ResNet layer1-4, ConvNeXt stages 0-3, a ViT's last four blocks as NCHW maps),
``pre_logits`` the pooled vector the classifier reads (``forward_head(final, pre_logits=True)``).

A hint loss owns its learnable helpers (embeddings, ABF modules, CRD memory). The engine builds them once
with ``setup()`` from the feature shapes of a dry forward, optimizes their parameters with the student, saves
them in ``last.pth`` (``kd_helpers``) and never puts them in ``student.pth``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..features import Features, FeatureShapes


class HintLoss(nn.Module):
    """Base class of the feature-based methods (cc, rkd, crd, review)."""

    is_logit_loss = False
    needs_stages = False      # True: the engine taps the four stage maps of student and teacher
    needs_index = False       # True: forward gets the dataset indices of the batch (CRD)

    def __init__(self) -> None:
        super().__init__()
        self.progress = 0.0  # epochs done so far, fractional, *after* the current step (never 0 in a step)

    def setup(self, student: FeatureShapes, teacher: FeatureShapes, num_samples: int) -> None:
        """Build the learnable helpers once the feature shapes are known."""

    def set_progress(self, epochs_done: float) -> None:
        self.progress = float(epochs_done)

    def forward(self, s: Features, t: Features, target: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
