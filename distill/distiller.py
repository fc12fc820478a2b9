"""One student and its KD method as one module, and the optimizer step that trains them.

The student's KD helpers (embeddings, ABF modules, CRD memory) live in ``kd_loss``; wrapping student and
helpers in one ``Distiller`` lets DDP average their gradients together, while ``student.pth`` still holds the
student alone. Features come from timm's ``forward_intermediates()``; no forward is patched.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.utils import dispatch_clip_grad

from common.io import UserError
from .features import Features, FeatureShapes
from .losses.hint import HintLoss


def wants_features(kd_loss: nn.Module | None) -> tuple[bool, bool]:
    """(needs pooled pre-logits, needs the four stage maps) for a KD loss."""
    if isinstance(kd_loss, HintLoss):
        return True, bool(kd_loss.needs_stages)
    return False, False


def extract(model: nn.Module, x: torch.Tensor, stages: bool) -> Features:
    """Logits, pooled pre-logits and (when asked) the last four stage maps of a timm model in one forward."""
    if not hasattr(model, "forward_intermediates"):
        raise UserError(f"{type(model).__name__} has no forward_intermediates(); hint-based KD needs it")
    final, maps = model.forward_intermediates(x, indices=4)
    pre = model.forward_head(final, pre_logits=True)
    logits = model.forward_head(final)
    return Features(logits=logits, pre_logits=pre, stages=list(maps) if stages else None)


@torch.no_grad()
def feature_shapes(model: nn.Module, img_size: int, device: torch.device) -> FeatureShapes:
    was = model.training
    model.eval()
    f = extract(model, torch.zeros(2, 3, img_size, img_size, device=device), stages=True)
    model.train(was)
    return FeatureShapes(pre_logits=f.pre_logits.shape[1], stages=[tuple(s.shape[1:]) for s in f.stages])


class Distiller(nn.Module):
    """Student + KD loss. ``forward`` returns (student logits, KD term before its weight)."""

    def __init__(self, student: nn.Module, kd_loss: nn.Module | None, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.student, self.kd_loss, self.amp_dtype = student, kd_loss, amp_dtype
        self.hint = isinstance(kd_loss, HintLoss)
        self.needs_stages = wants_features(kd_loss)[1]

    def forward(self, x: torch.Tensor, teacher: Features | None, target: torch.Tensor,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None):
            s = extract(self.student, x, self.needs_stages) if self.hint else Features(self.student(x), None, None)
        s = Features(s.logits.float(), None if s.pre_logits is None else s.pre_logits.float(),
                     None if s.stages is None else [m.float() for m in s.stages])
        if self.kd_loss is None or teacher is None:
            return s.logits, s.logits.new_zeros(())
        if self.hint:
            return s.logits, self.kd_loss(s, teacher, target, index)
        return s.logits, self.kd_loss(s.logits, teacher.logits, target)


def kd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            teacher: Features | None, hard_loss: nn.Module, ori_weight: float, kd_weight: float,
            scaler=None, clip_grad: float | None = None, clip_mode: str = "norm", where: str = "",
            index: torch.Tensor | None = None, skip_nonfinite: bool = False,
            all_finite=None) -> tuple[float, float, float, bool]:
    """One optimizer step: ori_weight * hard-label loss + kd_weight * KD(student, teacher).

    ``model`` is a Distiller (DDP-wrapped or not). Returns (total, hard-label term, KD term, stepped).
    A non-finite loss stops the run naming the step and terms, or (``skip_nonfinite``) skips the update;
    ``all_finite`` (a callable) makes every DDP rank agree before anyone skips, so no collective is left waiting.
    """
    logits, kd = model(x, teacher, y, index)
    ori = hard_loss(logits, y) if ori_weight else logits.new_zeros(())
    loss = ori_weight * ori + kd_weight * kd
    finite = bool(torch.isfinite(loss))
    if skip_nonfinite and all_finite is not None:
        finite = all_finite(finite)
    if not finite:
        terms = f"ori={ori.item():.4g} kd={kd.item():.4g}"
        if not skip_nonfinite:
            raise UserError(f"non-finite loss at {where or 'this step'}: {terms}; the last good checkpoint is kept "
                            "(--skip-nonfinite skips such steps instead)")
        print(f"skipped the update at {where or 'this step'}: non-finite loss ({terms})", flush=True)
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), ori.item(), kd.item(), False
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            dispatch_clip_grad(_params(optimizer), clip_grad, mode=clip_mode)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad:
            dispatch_clip_grad(_params(optimizer), clip_grad, mode=clip_mode)
        optimizer.step()
    return loss.item(), ori.item(), kd.item(), True


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Student and KD-helper parameters alike: clipping covers everything the optimizer updates."""
    return [p for g in optimizer.param_groups for p in g["params"]]
