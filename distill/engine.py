"""The distillation loop: one teacher forward per batch feeds every student setting of the run.

A run holds one or more *settings* (student model x KD loss x weights), as the official code does: each
has its own optimizer, scheduler, EMA, AMP scaler and outputs, and they all see the same augmented batch
and the same teacher logits. Without a teacher the loop is plain supervised training (used to make teachers).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common.environment import fingerprint

from . import distributed as D
from .data import check_bad_files
from .distiller import kd_step, wants_features
from .evaluation import evaluate_teacher, validate_setting
from .features import Features
from .losses.hint import HintLoss
from .outputs import PROGRESS_FILE, Progress, log_epoch, open_outputs, record_cuda_peak
from .run_setup import Run, open_teacher_cache, set_up
from .run_state import resume_run, save_last, save_students
from .settings import Setting, seed_epoch
from .teacher import Teacher
from .teacher_cache import TeacherCache, TeacherCacheWriter

__all__ = ["train"]


def train(args: argparse.Namespace) -> dict:
    """Run the whole distillation (or supervised) job; returns the summary written to summary.json.

    The steps, in order: set up (data, students, teacher, loaders, one Setting per student), resume, the
    teacher's soft-label cache, outputs and the teacher's own accuracy, the epochs (train_one_epoch, then
    validate, log and checkpoint each setting), and the end of run (summary.json).
    """
    run = set_up(args)
    start_epoch = resume_run(run)
    open_teacher_cache(run, start_epoch)
    open_outputs(run)
    if start_epoch == 0 and run.info.is_main:  # progress.jsonl holds this run's steps (a resumed run appends)
        (run.out_root / PROGRESS_FILE).unlink(missing_ok=True)
    evaluate_teacher(run)
    for epoch in range(start_epoch, args.epochs):
        _run_epoch(run, epoch)
    summary = _end_of_run(run)
    record_cuda_peak(run.out_root, run.info.rank)
    return summary


def _run_epoch(run: Run, epoch: int) -> None:
    """One epoch: train every setting on the same batches, then validate, log and checkpoint each."""
    args, info = run.args, run.info
    seed_epoch(args.seed, epoch, info.rank)
    run.train_loader.sampler.set_epoch(epoch)
    if run.recorder is not None:
        run.recorder.begin_epoch(epoch)
    t0 = time.time()
    stats = _train_one_epoch(epoch, run.settings, run.teacher, run.cache, run.recorder, run.train_loader,
                             run.mixup, info.device, args, info, run.out_root / PROGRESS_FILE)
    if run.recorder is not None:
        run.recorder.end_epoch()
    epoch_time = time.time() - t0
    run.skipped_images += stats.pop("_skipped_images")
    validate = (epoch + 1) % max(1, args.val_interval) == 0 or epoch + 1 == args.epochs
    for st in run.settings:
        row = {"epoch": epoch + 1, "lr": st.optimizer.param_groups[0]["lr"], **stats[st.name],
               "epoch_seconds": epoch_time, **(validate_setting(run, st) if validate else {})}
        st.history.append(row)
        if info.is_main:
            log_epoch(st, row, epoch, args.epochs)
    # a resumed run restarts after the last saved epoch and replays the same batches: saving less often only
    # costs recomputation (for many short epochs the writes would cost more than the training)
    save = (epoch + 1) % max(1, args.save_interval) == 0 or epoch + 1 == args.epochs
    if info.is_main and save:
        save_last(run.ckpt_path, epoch + 1, run.settings, args)
        for st in run.settings:
            save_students(st, args)
    D.barrier()


def _train_one_epoch(epoch: int, settings: list[Setting], teacher: Teacher | None, cache: TeacherCache | None,
                     recorder: TeacherCacheWriter | None, loader, mixup, device: torch.device,
                     args: argparse.Namespace, info: D.DistInfo, progress_file: Path | None = None) -> dict:
    for st in settings:
        st.model.train()
    n_steps = len(loader)
    sums = {st.name: torch.zeros(3, dtype=torch.float64) for st in settings}
    need_pre = any(wants_features(st.kd_loss)[0] for st in settings)
    need_stages = any(wants_features(st.kd_loss)[1] for st in settings)
    skipped_images = 0
    all_finite = (lambda ok: D.all_reduce_min(float(ok)) > 0) if info.distributed else None
    progress = Progress(n_steps, f"epoch {epoch + 1}/{args.epochs}", args.progress, args.log_interval, info.is_main,
                        progress_file, epoch + 1, args.epochs)
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


def _end_of_run(run: Run) -> dict:
    """summary.json (last and best accuracy of each setting, the teacher's), writers closed, processes joined."""
    args, teacher, cache, teacher_metrics = run.args, run.teacher, run.cache, run.teacher_metrics
    summary = {"teacher": args.teacher or (cache.teacher["name"] if cache else None),
               "teacher_top1": teacher_metrics["top1"] if teacher_metrics else None,
               "teacher_forwards_last_epoch": teacher.forwards if teacher else 0,
               "teacher_cache": args.teacher_cache or None, "recorded_teacher": args.record_teacher or None,
               "num_classes": run.num_classes, "world_size": run.info.world_size, "epochs": args.epochs,
               "skipped_images": run.skipped_images, "settings": {}, "environment": fingerprint()}
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
