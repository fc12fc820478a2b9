"""ReviewKD (Chen et al. CVPR 2021): knowledge review with attention-based fusion (ABF) and the hierarchical
context loss (HCL), as in the official ReviewKD / VanillaKD code.

Levels: the four stage maps plus the pooled pre-logit vector as a 1 x 1 map, on both sides. One ABF per level,
run from the deepest level to the shallowest: 1x1 conv (student channels -> mid) + BN; except at the deepest
level, fuse with the residual of the deeper level (nearest-upsampled) by a 1x1 conv + sigmoid that predicts
two spatial attention maps; nearest-resize to the teacher's size at that level if it differs (teacher at
another resolution, ViT teachers); 3x3 conv (mid -> teacher channels) + BN. HCL per level = (MSE at full size
+ sum over l in (4, 2, 1), l < H, of MSE of l x l average pools with weights 1/2, 1/4, 1/8) / total weight;
summed over levels. loss = loss_weight * min(progress / warmup_epochs, 1) * HCL.

Defaults (official VanillaKD ``losses/review.py``): mid channels = min(512, student pre-logit width) -- 512
for ResNet-50 (the ImageNet ReviewKD code used 512 for ResNet-18, 256 for MobileNet; set ``mid_channel`` to
pin it), warm-up 1 epoch, no weight inside the loss (``loss_weight`` = 1, as ReviewKD's ImageNet
``review_kd_loss_weight``).

Deviations, deliberate:
- Features are the post-activation stage outputs of timm's ``forward_intermediates()`` (we never patch
  forwards); the official code taps the pre-activation (pre-ReLU) stage outputs.
- Warm-up reads the fractional epochs done after this step (``set_progress``), so the first epoch ramps up
  from 1/steps_per_epoch; the official code multiplies by the integer epoch, which zeroes all of epoch 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureShapes
from .hint import HintLoss
from .registry import register_loss


class ABF(nn.Module):
    """Attention-based fusion of one student level with the residual from the deeper level."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = (nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                out_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + residual * z[:, 1].view(n, 1, h, w)
        if tuple(x.shape[-2:]) != tuple(out_shape):
            x = F.interpolate(x, tuple(out_shape), mode="nearest")
        return self.conv2(x), x


def hcl_loss(fstudent: list[torch.Tensor], fteacher: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss: full-size MSE plus 4/2/1 pooled MSEs with halving weights, per level."""
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        fs, ft = fs.float(), ft.float()
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        cnt, tot = 1.0, 1.0
        for lvl in (4, 2, 1):
            if lvl >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (lvl, lvl)), F.adaptive_avg_pool2d(ft, (lvl, lvl))) * cnt
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all


def _levels(f: Features) -> list[torch.Tensor]:
    if f.stages is None or f.pre_logits is None:
        raise ValueError("ReviewKD needs the stage maps and the pre-logit features")
    return [*f.stages, f.pre_logits.flatten(1)[:, :, None, None]]


@register_loss("review")
class ReviewKDLoss(HintLoss):
    needs_stages = True

    def __init__(self, mid_channel: int | None = None, max_mid_channel: int = 512, warmup_epochs: float = 1.0,
                 loss_weight: float = 1.0):
        super().__init__()
        self.mid_channel, self.max_mid_channel = mid_channel, max_mid_channel
        self.warmup_epochs, self.loss_weight = warmup_epochs, loss_weight
        self.abfs: nn.ModuleList | None = None

    def setup(self, student: FeatureShapes, teacher: FeatureShapes, num_samples: int) -> None:
        """One ABF per level; ``abfs[0]`` is the deepest (pre-logit) level, as in the official code."""
        if len(student.stages) != len(teacher.stages):
            raise ValueError(f"ReviewKD pairs levels one to one: student has {len(student.stages)} stages, "
                             f"teacher {len(teacher.stages)}")
        in_ch = [c for c, _, _ in student.stages] + [student.pre_logits]
        out_ch = [c for c, _, _ in teacher.stages] + [teacher.pre_logits]
        mid = self.mid_channel or min(self.max_mid_channel, student.pre_logits)
        abfs = [ABF(i, mid, o, fuse=k < len(in_ch) - 1) for k, (i, o) in enumerate(zip(in_ch, out_ch))]
        self.abfs = nn.ModuleList(abfs[::-1])

    def warmup_factor(self) -> float:
        if self.warmup_epochs <= 0:
            return 1.0
        return min(self.progress / self.warmup_epochs, 1.0)

    def forward(self, s: Features, t: Features, target: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if self.abfs is None:
            raise RuntimeError("ReviewKDLoss.setup() must run before forward()")
        f_s, f_t = _levels(s)[::-1], _levels(t)[::-1]              # deepest first
        results = []
        residual = None
        for x, ft, abf in zip(f_s, f_t, self.abfs):
            out, residual = abf(x, residual, tuple(ft.shape[-2:]))
            results.append(out)
        return self.loss_weight * self.warmup_factor() * hcl_loss(results, [ft.detach() for ft in f_t])
