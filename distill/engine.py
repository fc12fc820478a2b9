"""The distillation loop: one teacher forward per batch feeds every student setting of the run.

A run holds one or more *settings* (student model x KD loss x weights), as the official code does: each
has its own optimizer, scheduler, EMA, AMP scaler and outputs, and they all see the same augmented batch
and the same teacher logits. Without a teacher the loop is plain supervised training (used to make teachers).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
import yaml
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy
from torch.nn.parallel import DistributedDataParallel

from common.io import UserError, atomic_file, atomic_save, load_checkpoint, load_strict, unwrap_state_dict
from common.weights import load_weights, read_state_dict

from . import distributed as D
from .data import (RealLabels, build_dataset, build_eval_loader, build_mixup, build_train_loader, extra_val_dataset,
                   sample_mixup_active, subset_per_class)
from .distiller import Distiller, feature_shapes, kd_step, wants_features
from .hub import save_hub_folders
from .losses import build_loss, get_loss_class
from .losses.hint import Features, HintLoss
from .models import create_model
from .teacher import Teacher, build_teacher
from .teacher_cache import TeacherCache, TeacherCacheWriter, fingerprint, teacher_fingerprint

__all__ = ["train", "kd_step", "evaluate", "experiment_dir"]

CHECKPOINT_VERSION = 1
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


def _settings_spec(args: argparse.Namespace) -> list[dict]:
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
    if name in ("kd",):
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


def _hard_loss(args: argparse.Namespace, mixup_active: bool, hint: bool = False) -> nn.Module:
    """timm train.py's choice of hard-label loss; hint methods use CE as in the paper (reference.md, sec. 3)."""
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


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Every epoch's randomness depends only on (seed, epoch, rank): a resumed run replays it exactly."""
    s = (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def experiment_dir(args: argparse.Namespace) -> Path:
    teacher = args.teacher or ("cache" if args.teacher_cache else None)
    name = args.experiment or "-".join(
        ["_".join(args.model)] + (["_".join(args.kd_loss), "from", teacher] if teacher else ["supervised"]))
    return Path(args.output) / name


class Progress:
    """tqdm bars on a terminal, plain log lines every ``interval`` steps otherwise."""

    def __init__(self, total: int, desc: str, mode: str, interval: int, enabled: bool):
        self.enabled, self.total, self.desc, self.interval = enabled, total, desc, max(1, interval)
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        if enabled and use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
        self.n = 0
        self.t0 = time.time()

    def update(self, **postfix: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)
        elif self.n % self.interval == 0 or self.n == self.total:
            items = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"{self.desc} [{self.n}/{self.total}] {items} ({time.time() - self.t0:.1f}s)", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_bad_files(bad: list[str], skip: bool) -> int:
    """Stop on an unreadable image (naming it) unless --skip-bad-images; return how many were skipped."""
    n = 0
    for b in bad:
        if not b:
            continue
        if b.startswith("!"):
            first = b[1:].split("; ")[0]
            raise UserError(f"unreadable image {first}" + ("" if skip else "; --skip-bad-images skips and counts "
                                                              "such files") + (" (too many in a row)" if skip else ""))
        n += b.count("; ") + 1
    return n


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
             channels_last: bool = False, real: RealLabels | None = None,
             skip_bad_images: bool = False) -> dict[str, float]:
    """Exact top-1/top-5 over all ranks (each rank holds a disjoint slice of the split); ReaL when given."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(8, dtype=torch.float64)
    for x, y, _, index, bad in loader:
        sums[5] += check_bad_files(bad, skip_bad_images)
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        top1, topk = accuracy(out, y, topk=(1, k))
        n = x.shape[0]
        sums[:4] += torch.tensor([top1.item() * n / 100, topk.item() * n / 100,
                                  nn.functional.cross_entropy(out, y, reduction="sum").item(), n], dtype=torch.float64)
        if real is not None:
            r = real.score(out.cpu(), index)
            sums[4] += r[0]
            sums[6:8] += r[1:]
    sums = D.all_reduce_sum(sums)
    model.train(was_training)
    n = max(sums[3].item(), 1)
    out = {"top1": 100 * sums[0].item() / n, "top5": 100 * sums[1].item() / n, "loss": sums[2].item() / n,
           "skipped_images": int(sums[5].item())}
    if real is not None:
        nr = max(sums[4].item(), 1)
        out.update(real_top1=100 * sums[6].item() / nr, real_top5=100 * sums[7].item() / nr)
    return out


def _sanitize_args(args: argparse.Namespace) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_file(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


@dataclass
class Run:
    """What the steps of one job share: built once by _set_up, read by the epoch loop and the end of run."""

    args: argparse.Namespace
    info: D.DistInfo
    amp_dtype: torch.dtype | None
    teacher_amp: torch.dtype | None
    out_root: Path
    specs: list[dict]
    train_ds: Any
    num_classes: int
    data_cfg: dict
    real: RealLabels | None
    teacher: Teacher | None
    train_loader: Any
    val_loader: Any
    extra_loaders: list
    mixup: Any
    settings: list[Setting]
    cache: TeacherCache | None = None
    recorder: TeacherCacheWriter | None = None
    teacher_metrics: dict | None = None
    skipped_images: int = 0

    @property
    def ckpt_path(self) -> Path:
        return self.out_root / "last.pth"


def train(args: argparse.Namespace) -> dict:
    """Run the whole distillation (or supervised) job; returns the summary written to summary.json.

    The steps, in order: set up (data, students, teacher, loaders, one Setting per student), resume, the
    teacher's soft-label cache, outputs and the teacher's own accuracy, the epochs (train_one_epoch, then
    validate, log and checkpoint each setting), and the end of run (summary.json).
    """
    run = _set_up(args)
    start_epoch = _resume(run)
    _open_teacher_cache(run, start_epoch)
    _open_outputs(run)
    _evaluate_teacher(run)
    for epoch in range(start_epoch, args.epochs):
        _run_epoch(run, epoch)
    return _end_of_run(run)


def _set_up(args: argparse.Namespace) -> Run:
    """Everything the epochs need, built in a fixed order (the seeds make each student's start reproducible)."""
    info = D.init_distributed(args.device)
    device = info.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels, as timm's train.py
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.bfloat16 if device.type == "cpu" else getattr(torch, args.amp_dtype)
    teacher_amp = teacher_amp_dtype(args.teacher_amp, amp_dtype, device)
    out_root = experiment_dir(args)
    specs = _settings_spec(args)
    _check_cache_flags(args, specs)

    # ---- data
    train_ds = build_dataset(args.data_dir, args.train_split, is_training=True)
    class_to_idx = train_ds.reader.class_to_idx
    num_classes = args.num_classes or len(class_to_idx)
    if num_classes != len(class_to_idx):
        raise UserError(f"--num-classes is {num_classes} but {args.data_dir}/{args.train_split} has "
                        f"{len(class_to_idx)} class folders")
    val_ds = build_dataset(args.data_dir, args.val_split, is_training=False, class_to_idx=class_to_idx)
    extra_vals = [extra_val_dataset(spec, class_to_idx) for spec in args.extra_val or []]
    real = RealLabels(args.real_labels, val_ds.reader.samples) if args.real_labels else None
    subset_per_class(train_ds, args.train_subset, args.seed)

    modules = _create_students(args, specs, num_classes)
    data_cfg = timm.data.resolve_data_config({}, model=modules[0])
    data_cfg.update(input_size=(3, args.img_size, args.img_size), crop_pct=args.crop_pct,
                    interpolation=args.interpolation)
    data_cfg["test_input_size"] = (3, args.test_img_size or args.img_size, args.test_img_size or args.img_size)
    if args.mean:
        data_cfg["mean"] = tuple(args.mean)
    if args.std:
        data_cfg["std"] = tuple(args.std)

    teacher: Teacher | None = None
    if args.teacher:
        teacher = build_teacher(args.teacher, num_classes, args.teacher_checkpoint, args.teacher_pretrained,
                                data_cfg["mean"], data_cfg["std"], args.teacher_mean, args.teacher_std,
                                args.teacher_resize, teacher_amp, args.channels_last, args.unsafe_load,
                                compile=args.teacher_compile).to(device)

    train_loader = build_train_loader(train_ds, args, data_cfg, device, info.rank, info.world_size, num_classes)
    val_loader = build_eval_loader(val_ds, args, data_cfg, info.rank, info.world_size)
    extra_loaders = [(name, build_eval_loader(ds, args, data_cfg, info.rank, info.world_size))
                     for name, ds in extra_vals]
    mixup = build_mixup(args, num_classes)
    soft_targets = mixup is not None or sample_mixup_active(args)
    updates_per_epoch = len(train_loader)
    if updates_per_epoch == 0:
        raise UserError(f"no training batches: {len(train_ds)} images for batch size {args.batch_size} "
                        f"x {info.world_size} process(es)")
    settings = [_build_setting(args, s, m, teacher, len(train_ds), soft_targets, updates_per_epoch, amp_dtype,
                               info, out_root if len(specs) == 1 else out_root / s["name"])
                for s, m in zip(specs, modules)]
    return Run(args, info, amp_dtype, teacher_amp, out_root, specs, train_ds, num_classes, data_cfg, real, teacher,
               train_loader, val_loader, extra_loaders, mixup, settings)


def _create_students(args: argparse.Namespace, specs: list[dict], num_classes: int) -> list[nn.Module]:
    modules = []
    for s in specs:
        # identical initial weights on every rank and every resume, and for every setting of the same model
        # (methods compared in one run start from the same student)
        _seed_epoch(args.seed, -1, 0)
        m = create_model(s["model"], pretrained=args.pretrained, num_classes=num_classes, img_size=args.img_size,
                         drop_rate=args.drop, drop_path_rate=args.drop_path or None)
        if args.initial_checkpoint:
            load_weights(m, read_state_dict(args.initial_checkpoint, args.unsafe_load),
                         f"--initial-checkpoint {args.initial_checkpoint}")
        modules.append(m)
    return modules


def _build_setting(args: argparse.Namespace, s: dict, m: nn.Module, teacher: Teacher | None, num_samples: int,
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
                   _hard_loss(args, soft_targets, isinstance(kd_loss, HintLoss)), optimizer, scheduler, emas, scaler,
                   out_dir)


def _resume(run: Run) -> int:
    """--resume: restore every setting from last.pth; returns the epoch to start from."""
    args = run.args
    if not args.resume:
        return 0
    path = run.ckpt_path if args.resume == "auto" else Path(args.resume)
    start_epoch = _load_last(path, run.settings, args)
    if run.info.is_main:
        print(f"resumed from {path} at epoch {start_epoch}", flush=True)
    return start_epoch


def _open_teacher_cache(run: Run, start_epoch: int) -> None:
    """--teacher-cache replays recorded soft labels; --record-teacher records them during this run."""
    args = run.args
    if not (args.teacher_cache or args.record_teacher):
        return
    fp = fingerprint(args, run.train_ds.reader.samples, Path(args.data_dir) / args.train_split, run.num_classes,
                     run.data_cfg)
    if args.teacher_cache:
        run.cache = TeacherCache(args.teacher_cache, fp, args.epochs, start_epoch)
        if run.info.is_main:
            print(f"teacher soft labels from {args.teacher_cache} (teacher {run.cache.teacher['name']}, "
                  f"top-{run.cache.k} of {run.cache.num_classes}); no teacher forward", flush=True)
    else:
        precision = str(run.teacher_amp or torch.float32).replace("torch.", "")
        run.recorder = TeacherCacheWriter(args.record_teacher, fp, teacher_fingerprint(args, precision),
                                          args.teacher_topk, run.train_loader.sampler.positions_per_epoch,
                                          run.info.is_main)
        if run.info.is_main:
            mb = run.recorder.meta["bytes_per_epoch"] / 2**20
            print(f"recording the teacher's top-{run.recorder.k} into {args.record_teacher}: {mb:.3f} MB per epoch",
                  flush=True)


def _open_outputs(run: Run) -> None:
    """Output folders, TensorBoard writers and config.yaml (main process only)."""
    if not run.info.is_main:
        return
    args = run.args
    run.out_root.mkdir(parents=True, exist_ok=True)
    for st in run.settings:
        st.out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        st.writer = SummaryWriter(str(st.out_dir / "tb"))
    (run.out_root / "config.yaml").write_text(yaml.safe_dump(
        {**_sanitize_args(args), "num_classes": run.num_classes, "world_size": run.info.world_size,
         "settings": run.specs, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in run.data_cfg.items()}}, sort_keys=False))


def _evaluate_teacher(run: Run) -> None:
    """The teacher's own val accuracy, once, before training (summary.json reports it)."""
    if run.teacher is None:
        return
    args = run.args
    run.teacher_metrics = evaluate(run.teacher.model, run.val_loader, run.info.device, run.teacher_amp,
                                   args.channels_last, run.real, args.skip_bad_images)
    run.teacher.forwards = 0
    if run.info.is_main:
        precision = str(run.teacher_amp or torch.float32).replace("torch.", "")
        print(f"teacher {args.teacher} ({precision}): val top1 {run.teacher_metrics['top1']:.2f} "
              f"top5 {run.teacher_metrics['top5']:.2f}", flush=True)


def _run_epoch(run: Run, epoch: int) -> None:
    """One epoch: train every setting on the same batches, then validate, log and checkpoint each."""
    args, info = run.args, run.info
    _seed_epoch(args.seed, epoch, info.rank)
    run.train_loader.sampler.set_epoch(epoch)
    if run.recorder is not None:
        run.recorder.begin_epoch(epoch)
    t0 = time.time()
    stats = _train_one_epoch(epoch, run.settings, run.teacher, run.cache, run.recorder, run.train_loader,
                             run.mixup, info.device, args, info)
    if run.recorder is not None:
        run.recorder.end_epoch()
    epoch_time = time.time() - t0
    run.skipped_images += stats.pop("_skipped_images")
    validate = (epoch + 1) % max(1, args.val_interval) == 0 or epoch + 1 == args.epochs
    for st in run.settings:
        row = {"epoch": epoch + 1, "lr": st.optimizer.param_groups[0]["lr"], **stats[st.name],
               "epoch_seconds": epoch_time, **(_validate(run, st) if validate else {})}
        st.history.append(row)
        if info.is_main:
            _log_epoch(st, row, epoch, args.epochs)
    # a resumed run restarts after the last saved epoch and replays the same batches: saving less often only
    # costs recomputation (for many short epochs the writes would cost more than the training)
    save = (epoch + 1) % max(1, args.save_interval) == 0 or epoch + 1 == args.epochs
    if info.is_main and save:
        _save_last(run.ckpt_path, epoch + 1, run.settings, args)
        for st in run.settings:
            _save_students(st, args)
    D.barrier()


def _validate(run: Run, st: Setting) -> dict[str, float]:
    """val top-1/top-5/loss of the student (and ReaL), each extra val set, and each EMA."""
    args, device, amp = run.args, run.info.device, run.amp_dtype
    m = evaluate(st.module, run.val_loader, device, amp, args.channels_last, run.real, args.skip_bad_images)
    row = dict(val_top1=m["top1"], val_top5=m["top5"], val_loss=m["loss"])
    if run.real is not None:
        row.update(val_real_top1=m["real_top1"], val_real_top5=m["real_top5"])
    for name, loader in run.extra_loaders:
        em = evaluate(st.module, loader, device, amp, args.channels_last, None, args.skip_bad_images)
        row.update({f"{name}_top1": em["top1"], f"{name}_top5": em["top5"]})
    for i, ema in enumerate(st.emas):
        em = evaluate(ema.module, run.val_loader, device, amp, args.channels_last, None, args.skip_bad_images)
        suffix = "" if i == 0 else f"_{args.model_ema_decay[i]:g}"
        row[f"ema{suffix}_top1"], row[f"ema{suffix}_top5"] = em["top1"], em["top5"]
    return row


def _log_epoch(st: Setting, row: dict, epoch: int, epochs: int) -> None:
    print(f"epoch {epoch + 1}/{epochs} {st.name}: " + " ".join(
        f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch",)), flush=True)
    for k, v in row.items():
        if k != "epoch":
            st.writer.add_scalar(k, v, epoch + 1)
    st.writer.flush()
    _write_csv(st.out_dir / "metrics.csv", st.history)


def _end_of_run(run: Run) -> dict:
    """summary.json (last and best accuracy of each setting, the teacher's), writers closed, processes joined."""
    args, teacher, cache, teacher_metrics = run.args, run.teacher, run.cache, run.teacher_metrics
    summary = {"teacher": args.teacher or (cache.teacher["name"] if cache else None),
               "teacher_top1": teacher_metrics["top1"] if teacher_metrics else None,
               "teacher_forwards_last_epoch": teacher.forwards if teacher else 0,
               "teacher_cache": args.teacher_cache or None, "recorded_teacher": args.record_teacher or None,
               "num_classes": run.num_classes, "world_size": run.info.world_size, "epochs": args.epochs,
               "skipped_images": run.skipped_images, "settings": {}}
    if teacher_metrics and run.real is not None:
        summary["teacher_real_top1"] = teacher_metrics["real_top1"]
    for st in run.settings:
        last = st.history[-1] if st.history else {}
        summary["settings"][st.name] = {
            "model": st.model_name, "kd_loss": st.kd_loss_name, "kd_weight": st.kd_weight,
            "ori_weight": st.ori_weight, "top1": last.get("val_top1"), "top5": last.get("val_top5"),
            "best_top1": max((r["val_top1"] for r in st.history if "val_top1" in r), default=None),
            "ema_top1": last.get("ema_top1"), "skipped_steps": st.skipped_steps, "dir": str(st.out_dir)}
        for k in last:
            if k.endswith("_top1") and k not in ("val_top1", "ema_top1"):
                summary["settings"][st.name][k] = last[k]
        if st.writer is not None:
            st.writer.close()
    if run.info.is_main:
        (run.out_root / "summary.json").write_text(json.dumps(summary, indent=2))
    D.barrier()
    D.cleanup()
    return summary


def teacher_amp_dtype(choice: str, student_amp: torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The teacher's autocast dtype. ``auto``: the student's --amp setting, and bf16 on a GPU that has it even
    without --amp (a frozen teacher's forward is the run's biggest cost and needs no fp32 master weights)."""
    if choice == "off":
        return None
    if choice != "auto":
        return getattr(torch, choice)
    if student_amp is not None:
        return student_amp
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _check_cache_flags(args: argparse.Namespace, specs: list[dict]) -> None:
    if args.teacher_cache and args.record_teacher:
        raise UserError("--teacher-cache replays a recording; --record-teacher makes one: give one of them")
    if args.record_teacher and not args.teacher:
        raise UserError("--record-teacher needs a teacher (--teacher NAME with its weights)")
    if args.teacher_cache and args.teacher:
        raise UserError("--teacher-cache replaces the teacher: drop --teacher (the cache names its teacher)")
    if (args.teacher_cache or args.record_teacher) and not args.no_aug and (args.mixup > 0 or args.cutmix > 0) \
            and args.mixup_mode != "sample":
        raise UserError("the teacher cache needs replayable mixup/cutmix: add --mixup-mode sample "
                        "(timm's batch mixup pairs samples by batch position, which depends on the world size)")
    if args.teacher_cache:
        hint = [s["kd_loss"] for s in specs if s["kd_loss"] and not getattr(get_loss_class(s["kd_loss"]),
                                                                           "is_logit_loss", True)]
        if hint:
            raise UserError(f"--teacher-cache holds logits only; hint-based {', '.join(hint)} needs the online "
                            "teacher's features")


def _train_one_epoch(epoch: int, settings: list[Setting], teacher: Teacher | None, cache: TeacherCache | None,
                     recorder: TeacherCacheWriter | None, loader, mixup, device: torch.device,
                     args: argparse.Namespace, info: D.DistInfo) -> dict:
    for st in settings:
        st.model.train()
    n_steps = len(loader)
    sums = {st.name: torch.zeros(3, dtype=torch.float64) for st in settings}
    need_pre = any(wants_features(st.kd_loss)[0] for st in settings)
    need_stages = any(wants_features(st.kd_loss)[1] for st in settings)
    skipped_images = 0
    all_finite = (lambda ok: D.all_reduce_min(float(ok)) > 0) if info.distributed else None
    progress = Progress(n_steps, f"epoch {epoch + 1}/{args.epochs}", args.progress, args.log_interval, info.is_main)
    for step, (x, y, positions, index, bad) in enumerate(loader):
        skipped = check_bad_files(bad, args.skip_bad_images)
        if skipped:
            skipped_images += skipped
            print(f"skipped {skipped} unreadable image(s): {'; '.join(b for b in bad if b)}", flush=True)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        index = index.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t: Features | None = None
        if teacher is not None:  # one teacher forward for every setting
            t = teacher(x, features=need_pre, stages=need_stages)
            if recorder is not None:
                recorder.write(positions, t.logits)
        elif cache is not None:
            t = Features(cache.logits(epoch, positions, device), None, None)
        num_updates = epoch * n_steps + step + 1
        post = {}
        for st in settings:
            if isinstance(st.kd_loss, HintLoss):
                st.kd_loss.set_progress(epoch + (step + 1) / n_steps)
            loss, ori, kd, stepped = kd_step(
                st.model, st.optimizer, x, y, t, st.hard_loss, st.ori_weight, st.kd_weight, st.scaler,
                args.clip_grad, args.clip_mode, where=f"epoch {epoch + 1} step {step + 1} for {st.name}",
                index=index, skip_nonfinite=args.skip_nonfinite, all_finite=all_finite)
            st.skipped_steps += not stepped
            if stepped:
                for ema in st.emas:
                    ema.update(st.module, step=num_updates)
            st.scheduler.step_update(num_updates=num_updates)
            sums[st.name] += torch.tensor([loss, ori, kd] if stepped else [0.0, 0.0, 0.0], dtype=torch.float64)
            post[st.name if len(settings) > 1 else "loss"] = loss
        progress.update(**post)
    progress.close()
    out: dict = {"_skipped_images": int(D.all_reduce_sum(torch.tensor([float(skipped_images)]))[0].item())}
    for st in settings:
        s = D.all_reduce_sum(sums[st.name]) / (n_steps * info.world_size)
        out[st.name] = {"train_loss": s[0].item(), "train_ori_loss": s[1].item(), "train_kd_loss": s[2].item()}
    return out


def _save_last(path: Path, epoch: int, settings: list[Setting], args: argparse.Namespace) -> None:
    state = {"version": CHECKPOINT_VERSION, "epoch": epoch, "args": _sanitize_args(args), "settings": {}}
    for st in settings:
        state["settings"][st.name] = {
            "model_name": st.model_name,
            "student": st.module.state_dict(),
            "optimizer": st.optimizer.state_dict(),
            "scheduler": st.scheduler.state_dict(),
            "ema": [e.module.state_dict() for e in st.emas],
            "scaler": st.scaler.state_dict() if st.scaler is not None else None,
            "kd_helpers": st.kd_loss.state_dict() if st.kd_loss is not None else {},
            "history": st.history,
        }
    atomic_save(state, path)


def _save_students(st: Setting, args: argparse.Namespace) -> None:
    """Plain timm state dicts: ``timm.create_model(name, num_classes=N)`` loads them strictly."""
    atomic_save(st.module.state_dict(), st.out_dir / "student.pth")
    for i, ema in enumerate(st.emas):
        suffix = "" if i == 0 else f"_{args.model_ema_decay[i]:g}"
        atomic_save(ema.module.state_dict(), st.out_dir / f"student_ema{suffix}.pth")
    save_hub_folders(st.module, [e.module for e in st.emas], st.out_dir, args)  # timm/, timm_ema*/ (distill/hub.py)


def _load_last(path: Path, settings: list[Setting], args: argparse.Namespace) -> int:
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    state = load_checkpoint(path)  # weights_only: our own files hold only tensors and plain containers
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "settings" not in state:
        raise UserError(f"{path} is not a vanillakd run checkpoint")
    for st in settings:
        if st.name not in state["settings"]:
            raise UserError(f"{path} has no setting {st.name!r} (it has {', '.join(state['settings'])})")
        s = state["settings"][st.name]
        load_strict(st.module, s["student"], f"{path} [{st.name}]")
        st.optimizer.load_state_dict(s["optimizer"])
        st.scheduler.load_state_dict(s["scheduler"])
        for ema, sd in zip(st.emas, s["ema"]):
            ema.module.load_state_dict(sd)
        if st.scaler is not None and s["scaler"]:
            st.scaler.load_state_dict(s["scaler"])
        if st.kd_loss is not None and s["kd_helpers"]:
            st.kd_loss.load_state_dict(s["kd_helpers"])
        st.history = list(s["history"])
    epoch = int(state["epoch"])
    if epoch >= args.epochs and args.epochs > 0:
        print(f"{path}: already trained {epoch} of {args.epochs} epochs", flush=True)
    return epoch
