"""Setting up a run: the data, the students, the teacher, the loaders and one Setting per student, built once in a
fixed order into a ``Run`` that the epochs, the run's state on disk, evaluation and the outputs read; the
checks of the flags that only make sense together; the teacher's soft-label cache opened or recorded.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from common.io import UserError

from . import distributed as D
from .data import (RealLabels, build_dataset, build_eval_loader, build_mixup, build_train_loader, extra_val_dataset,
                   sample_mixup_active, subset_per_class)
from .losses import get_loss_class
from .settings import Setting, build_setting, create_students, settings_spec
from .teacher import Teacher, build_teacher
from .teacher_cache import TeacherCache, TeacherCacheWriter, fingerprint, teacher_fingerprint


def experiment_dir(args: argparse.Namespace) -> Path:
    teacher = args.teacher or ("cache" if args.teacher_cache else None)
    name = args.experiment or "-".join(
        ["_".join(args.model)] + (["_".join(args.kd_loss), "from", teacher] if teacher else ["supervised"]))
    return Path(args.output) / name


@dataclass
class Run:
    """What the steps of one job share: built once by set_up, read by the epoch loop and the end of run."""

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
    steps_per_epoch: int = 0  # the full epoch's batches (the loader's own length drops those a resumed epoch skips)
    stop: Any = None  # distill.stop.StopRequest: the signal that asked the run to stop
    heartbeat: Any = None  # distill.heartbeat.Heartbeat under torchrun: names a lost rank
    saved: Any = None  # distill.run_state.Position of the last.pth on disk (None: none yet), for the fault lines

    @property
    def ckpt_path(self) -> Path:
        return self.out_root / "last.pth"


def set_up(args: argparse.Namespace) -> Run:
    """Everything the epochs need, built in a fixed order (the seeds make each student's start reproducible)."""
    info = D.init_distributed(args.device)
    device = info.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels, as timm's train.py
    amp_dtype = amp_dtype_for(args.amp, args.amp_dtype, device)
    teacher_amp = teacher_amp_dtype(args.teacher_amp, amp_dtype, device)
    out_root = experiment_dir(args)
    specs = settings_spec(args)
    _check_cache_flags(args, specs)

    # ---- data
    train_ds = build_dataset(args.data_dir, args.train_split, is_training=True, dataset=args.dataset)
    class_to_idx = train_ds.class_to_idx  # the container's own order (distill/containers.py)
    num_classes = args.num_classes or len(class_to_idx)
    if not num_classes:
        raise UserError(f"{train_ds.where} names no classes (its _info.json has no num_classes): give --num-classes")
    if class_to_idx and num_classes != len(class_to_idx):
        raise UserError(f"--num-classes is {num_classes} but {train_ds.where} split {args.train_split} has "
                        f"{len(class_to_idx)} classes")
    val_ds = build_dataset(args.data_dir, args.val_split, is_training=False, class_to_idx=class_to_idx or None,
                           dataset=args.dataset)
    extra_vals = [extra_val_dataset(spec, class_to_idx) for spec in args.extra_val or []]
    real = RealLabels(args.real_labels, val_ds.samples) if args.real_labels else None
    subset_per_class(train_ds, args.train_subset, args.seed)

    modules = create_students(args, specs, num_classes)
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
    eval_opts = dict(batch_size=args.validation_batch_size or args.batch_size, workers=args.workers, seed=args.seed,
                     skip_bad_images=args.skip_bad_images)
    val_loader = build_eval_loader(val_ds, data_cfg, info.rank, info.world_size, **eval_opts)
    extra_loaders = [(name, build_eval_loader(ds, data_cfg, info.rank, info.world_size, **eval_opts))
                     for name, ds in extra_vals]
    mixup = build_mixup(args, num_classes)
    soft_targets = mixup is not None or sample_mixup_active(args)
    updates_per_epoch = len(train_loader)
    if updates_per_epoch == 0:
        raise UserError(f"no training batches: {len(train_ds)} images for batch size {args.batch_size} "
                        f"x {info.world_size} process(es)")
    settings = [build_setting(args, s, m, teacher, len(train_ds), soft_targets, updates_per_epoch, amp_dtype,
                               info, out_root if len(specs) == 1 else out_root / s["name"])
                for s, m in zip(specs, modules)]
    return Run(args, info, amp_dtype, teacher_amp, out_root, specs, train_ds, num_classes, data_cfg, real, teacher,
               train_loader, val_loader, extra_loaders, mixup, settings, steps_per_epoch=updates_per_epoch)


def amp_dtype_for(amp: bool, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """--amp's autocast dtype: bfloat16 on a CPU (its autocast has no float16 path), else --amp-dtype."""
    if not amp:
        return None
    return torch.bfloat16 if device.type == "cpu" else getattr(torch, amp_dtype)


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


def open_teacher_cache(run: Run, start_epoch: int) -> None:
    """--teacher-cache replays recorded soft labels; --record-teacher records them during this run."""
    args = run.args
    if not (args.teacher_cache or args.record_teacher):
        return
    fp = fingerprint(args, run.train_ds, run.num_classes, run.data_cfg)
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
