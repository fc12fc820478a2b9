"""The settings of a run: one student x KD loss x weights each, built from the command line (--model, --kd-loss
and the loss weights broadcast against each other), with everything a setting owns (optimizer, scheduler, EMAs,
AMP scaler, the hard-label loss, the DDP-wrapped distiller), and the seeding that makes each start reproducible.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import yaml
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from common.io import UserError
from common.weights import load_weights, read_state_dict

from . import distributed as D
from .distiller import Distiller, feature_shapes
from .losses import build_loss, get_loss_class
from .losses.hint import HintLoss
from common.models import create_model
from .teacher import Teacher

NO_KD = "none"  # --kd-loss none: hard label only (the "scratch" baseline), same data, recipe and hard-label loss


@dataclass
class Setting:
    """One student trained in the run, with everything it owns."""

    name: str
    model_name: str
    kd_loss_name: str | None
    kd_weight: float
    ori_weight: float
    module: nn.Module  # the student alone (what student.pth holds)
    model: nn.Module  # Distiller(student, kd_loss), DDP-wrapped when distributed
    kd_loss: nn.Module | None
    hard_loss: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    emas: list[ModelEmaV3]
    scaler: torch.amp.GradScaler | None
    out_dir: Path
    history: list[dict] = field(default_factory=list)
    writer: Any = None
    skipped_steps: int = 0


def _broadcast(values: list, n: int, what: str) -> list:
    if len(values) == n:
        return list(values)
    if len(values) == 1:
        return list(values) * n
    raise UserError(f"{what} has {len(values)} values; give one, or one per setting ({n})")


def settings_spec(args: argparse.Namespace) -> list[dict]:
    models, losses = list(args.model), list(args.kd_loss) if (args.teacher or args.teacher_cache) else [None]
    n = max(len(models), len(losses))
    models = _broadcast(models, n, "--model")
    losses = _broadcast(losses, n, "--kd-loss")
    kd_w = _broadcast(args.kd_loss_weight, n, "--kd-loss-weight")
    ori_w = _broadcast(args.ori_loss_weight, n, "--ori-loss-weight")
    specs = []
    for m, l, kw, ow in zip(models, losses, kd_w, ori_w):
        name = f"{m}-{l}" if l else m
        if n > 1 and (kw != 1 or ow != 1):
            name += f"-kd{kw:g}-ori{ow:g}"
        if l == NO_KD:  # the hard-label baseline trained next to the KD settings on the same batches
            l, kw, ow = None, 0.0, 1.0
        specs.append(dict(name=name, model=m, kd_loss=l, kd_weight=kw if l else 0.0, ori_weight=ow if l else 1.0))
    for l in set(losses) - {None, NO_KD}:
        get_loss_class(l)  # an unknown name fails before any data is read
    if len({s["name"] for s in specs}) != len(specs):
        raise UserError("two settings are identical; vary --model, --kd-loss or the loss weights")
    for s in specs:
        if s["kd_weight"] == 0 and s["ori_weight"] == 0:
            raise UserError(f"setting {s['name']}: both --kd-loss-weight and --ori-loss-weight are 0")
    return specs


def _kd_hparams(args: argparse.Namespace, name: str) -> dict:
    out: dict[str, Any] = {}
    if name in ("kd", "lskd"):
        out = dict(temperature=args.temperature)
    elif name == "dkd":
        out = dict(alpha=args.dkd_alpha, beta=args.dkd_beta, temperature=args.temperature)
    elif name == "dist":
        out = dict(beta=args.dist_beta, gamma=args.dist_gamma, temperature=args.temperature)
    for item in args.kd_hparams or []:
        if "=" not in item:
            raise UserError(f"--kd-hparams expects [LOSS.]NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if "." in k:  # scoped to one method: crd.nce_k=4096
            scope, k = k.split(".", 1)
            get_loss_class(scope)
            if scope != name:
                continue
        out[k.replace("-", "_")] = yaml.safe_load(v)
    return out


def hard_label_loss(args: argparse.Namespace, mixup_active: bool, hint: bool = False) -> nn.Module:
    """timm train.py's choice of hard-label loss; hint methods use CE as in the paper (arXiv 2305.15781, Sec. 4)."""
    if hint:
        if mixup_active:
            return SoftTargetCrossEntropy()
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing) if args.smoothing else nn.CrossEntropyLoss()
    if mixup_active:
        if args.bce_loss:
            return BinaryCrossEntropy(target_threshold=args.bce_target_thresh)
        return SoftTargetCrossEntropy()
    if args.smoothing:
        if args.bce_loss:
            return BinaryCrossEntropy(smoothing=args.smoothing, target_threshold=args.bce_target_thresh)
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    if args.bce_loss:
        return BinaryCrossEntropy(target_threshold=args.bce_target_thresh)
    return nn.CrossEntropyLoss()


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Every epoch's randomness depends only on (seed, epoch, rank): a resumed run replays it exactly."""
    s = (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def create_students(args: argparse.Namespace, specs: list[dict], num_classes: int) -> list[nn.Module]:
    modules = []
    for s in specs:
        # identical initial weights on every rank and every resume, and for every setting of the same model
        # (methods compared in one run start from the same student)
        seed_epoch(args.seed, -1, 0)
        m = create_model(s["model"], pretrained=args.pretrained, num_classes=num_classes, img_size=args.img_size,
                         drop_rate=args.drop, drop_path_rate=args.drop_path or None)
        if args.initial_checkpoint:
            load_weights(m, read_state_dict(args.initial_checkpoint, args.unsafe_load),
                         f"--initial-checkpoint {args.initial_checkpoint}")
        modules.append(m)
    return modules


def build_setting(args: argparse.Namespace, s: dict, m: nn.Module, teacher: Teacher | None, num_samples: int,
                   soft_targets: bool, updates_per_epoch: int, amp_dtype: torch.dtype | None, info: D.DistInfo,
                   out_dir: Path) -> Setting:
    """One student with its KD loss, optimizer, scheduler, EMAs, scaler and (DDP-wrapped) distiller."""
    device = info.device
    m = m.to(device)
    if args.channels_last:
        m = m.to(memory_format=torch.channels_last)
    kd_loss = build_loss(s["kd_loss"], **_kd_hparams(args, s["kd_loss"])) if s["kd_loss"] else None
    if isinstance(kd_loss, HintLoss):  # helpers are sized from one dry forward of each side
        t_img = args.teacher_resize or args.img_size
        kd_loss.setup(feature_shapes(m, args.img_size, device), feature_shapes(teacher.model, t_img, device),
                      num_samples=num_samples)
    if kd_loss is not None:
        kd_loss = kd_loss.to(device)
    optimizer = create_optimizer_v2(m, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    if kd_loss is not None and any(True for _ in kd_loss.parameters()):
        optimizer.add_param_group({"params": list(kd_loss.parameters()), "weight_decay": args.weight_decay})
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                                       min_lr=args.min_lr, decay_milestones=args.decay_milestones,
                                       decay_rate=args.decay_rate, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    emas = [ModelEmaV3(m, decay=d) for d in args.model_ema_decay] if args.model_ema else []
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None
    distiller = Distiller(m, kd_loss, amp_dtype)
    model = DistributedDataParallel(distiller, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.distributed else distiller
    return Setting(s["name"], s["model"], s["kd_loss"], s["kd_weight"], s["ori_weight"], m, model, kd_loss,
                   hard_label_loss(args, soft_targets, isinstance(kd_loss, HintLoss)), optimizer, scheduler, emas, scaler,
                   out_dir)


def ema_suffix(args: argparse.Namespace, i: int) -> str:
    """The name part of the i-th EMA (--model-ema-decay): "" for the first, "_<decay>" for the others; the same in
    student_ema*.pth, timm_ema*/ and the ema*_top1 columns."""
    return "" if i == 0 else f"_{args.model_ema_decay[i]:g}"
