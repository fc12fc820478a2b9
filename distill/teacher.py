"""The frozen teacher: any timm model, from timm's pretrained weights or a local checkpoint in any layout timm maps.

It sees the student's exact augmented view, re-normalized when its mean/std differ from the student's and
resized when asked (--teacher-resize), in eval mode under ``torch.inference_mode()``: no autograd state.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.io import UserError
from common.weights import load_weights, read_state_dict

from .distiller import extract
from .features import Features
from common.models import create_model


class Teacher(nn.Module):
    def __init__(self, model: nn.Module, student_mean, student_std, teacher_mean, teacher_std,
                 resize: int | None = None, amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                 compile: bool = False):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        # the teacher's forward never changes: with --teacher-compile it is compiled once for the whole run
        # (kept out of the module tree so the state dict and .to() see the plain model only)
        self.__dict__["_logits_fn"] = torch.compile(self.model, dynamic=False) if compile else self.model
        self.__dict__["_features_fn"] = torch.compile(extract, dynamic=False) if compile else extract
        s_mean, s_std = torch.tensor(student_mean), torch.tensor(student_std)
        t_mean, t_std = torch.tensor(teacher_mean), torch.tensor(teacher_std)
        self.renorm = not (torch.allclose(s_mean, t_mean) and torch.allclose(s_std, t_std))
        # x_t = (x_s * std_s + mean_s - mean_t) / std_t  ==  x_s * scale + shift
        self.register_buffer("scale", (s_std / t_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, 3, 1, 1), persistent=False)
        self.resize = resize
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.forwards = 0  # counted so tests and logs can show one teacher forward per batch

    def train(self, mode: bool = True) -> "Teacher":  # the teacher never leaves eval mode
        return super().train(False)

    def forward(self, x: torch.Tensor, features: bool = False, stages: bool = False) -> Features:
        """Logits (and, for hint losses, pooled pre-logits and stage maps) of the student's view."""
        self.forwards += 1
        with torch.inference_mode():
            if self.renorm:
                x = x * self.scale + self.shift
            if self.resize and x.shape[-1] != self.resize:
                x = F.interpolate(x, size=(self.resize, self.resize), mode="bicubic", align_corners=False)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.bfloat16,
                                enabled=self.amp_dtype is not None):
                out = (self._features_fn(self.model, x, stages) if features
                       else Features(self._logits_fn(x), None, None))
        # normal tensors (not inference tensors), so losses may use them next to autograd tensors
        return Features(out.logits.float().clone(),
                        None if out.pre_logits is None else out.pre_logits.float().clone(),
                        None if out.stages is None else [m.float().clone() for m in out.stages])


def build_teacher(name: str, num_classes: int, checkpoint: str = "", pretrained: bool = False,
                  student_mean=None, student_std=None, teacher_mean=None, teacher_std=None,
                  resize: int | None = None, amp_dtype: torch.dtype | None = None,
                  channels_last: bool = False, allow_pickle: bool = False, compile: bool = False) -> Teacher:
    # a local checkpoint wins over timm's pretrained weights (no download when both are configured). With
    # --teacher-resize a model that takes a size (ViT, BEiT) is built at it: timm's filter resamples its position
    # tables from the file's size, as timm does for pretrained weights.
    model = create_model(name, pretrained=pretrained and not checkpoint, num_classes=num_classes, img_size=resize)
    if checkpoint:
        # any layout timm maps (BEiT v2's original release with its relative_position_index buffers, ...)
        load_weights(model, read_state_dict(checkpoint, allow_pickle, prefer_ema=True),
                     f"teacher checkpoint {checkpoint} (with {num_classes} classes)")
    elif not pretrained:
        raise UserError(f"teacher {name!r} has no weights: give --teacher-checkpoint or --teacher-pretrained")
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise UserError(f"teacher {name} predicts {model.num_classes} classes, the data has {num_classes}")
    cfg = timm.data.resolve_data_config({}, model=model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Teacher(model, student_mean, student_std, teacher_mean or cfg["mean"], teacher_std or cfg["std"],
                   resize=resize, amp_dtype=amp_dtype, channels_last=channels_last, compile=compile)
