"""The distillation loop: one teacher forward per batch feeds every student setting of the run.

A run holds one or more *settings* (student model x KD loss x weights), as the official code does: each
has its own optimizer, scheduler, EMA, AMP scaler and outputs, and they all see the same augmented batch
and the same teacher logits. Without a teacher the loop is plain supervised training (used to make teachers).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from common.environment import fingerprint
from common.errors import Stopped
from common.io import atomic_file
from common.signals import StopNow, StopRequest

from . import distributed as D
from .data import check_bad_files
from .distiller import kd_step, wants_features
from .evaluation import evaluate_teacher, validate_setting
from .faults import checkpoint_line, explain_failure, start_heartbeat
from .features import Features
from .losses.hint import HintLoss
from .outputs import PROGRESS_FILE, Progress, log_epoch, open_outputs, record_cuda_peak
from .run_setup import Run, open_teacher_cache, set_up
from .run_state import Position, resume_run, rng_state, save_last, save_students, set_rng_state
from .settings import seed_epoch

__all__ = ["train"]


def train(args: argparse.Namespace) -> dict:
    """Run the whole distillation (or supervised) job; returns the summary written to summary.json.

    The steps, in order: set up (data, students, teacher, loaders, one Setting per student), resume, the
    teacher's soft-label cache, outputs and the teacher's own accuracy, the epochs (train_one_epoch, then
    validate, log and checkpoint each setting), and the end of run (summary.json).

    Faults end in one line (distill/faults.py): SIGTERM or SIGINT stops after the step under way with a checkpoint
    of exactly that step; a full disk names the file and the intact checkpoint; a lost rank is named.
    """
    run = set_up(args)
    run.stop = StopRequest().install()
    run.heartbeat = start_heartbeat(run)
    try:
        pos = resume_run(run)
        run.saved = pos if args.resume else None
        open_teacher_cache(run, pos.epoch)
        open_outputs(run)
        if pos.epoch == 0 and pos.step == 0 and run.info.is_main:  # progress.jsonl holds this run's steps
            (run.out_root / PROGRESS_FILE).unlink(missing_ok=True)
        try:
            evaluate_teacher(run)
        except StopNow:  # nothing trained yet in this run: what is on disk is where it stands
            raise Stopped(f"stopped by {run.stop.name} before training: {checkpoint_line(run)}"
                          if run.info.is_main else "", run.stop.signum) from None
        for epoch in range(pos.epoch, args.epochs):
            _run_epoch(run, epoch, pos if epoch == pos.epoch else Position(epoch))
        summary = _end_of_run(run)
    except Exception as e:  # noqa: BLE001  a full disk or a lost rank: one line; anything else as it was
        explained = explain_failure(run, e)
        if explained is None:
            raise
        raise explained from None
    finally:
        run.stop.uninstall()
        if run.heartbeat is not None:
            run.heartbeat.stop()
    record_cuda_peak(run.out_root, run.info.rank)
    return summary


def _run_epoch(run: Run, epoch: int, pos: Position) -> None:
    """One epoch (from ``pos.step`` when resumed mid-epoch): train every setting on the same batches, then
    validate, log and checkpoint each. A stop that every rank agreed on saves where the epoch is and ends the run."""
    args, info = run.args, run.info
    seed_epoch(args.seed, epoch, info.rank)
    run.train_loader.sampler.set_epoch(epoch, start=pos.step * args.batch_size)
    # the teacher's recording of the epoch: kept across a mid-epoch stop; already published once it was trained
    recording = run.recorder is not None and pos.step < run.steps_per_epoch
    if recording:
        run.recorder.begin_epoch(epoch, resume=pos.step > 0)
    t0 = time.time() - pos.seconds
    if pos.step < run.steps_per_epoch:
        stats, step = _train_one_epoch(run, epoch, pos)
        if step < run.steps_per_epoch:  # stopped by a signal
            _stop(run, Position(epoch, step, None, *_totals(stats), time.time() - t0))
    else:  # resumed after the epoch's last step, before its validation
        stats = {"sums": {st.name: pos.sums.get(st.name, torch.zeros(3, dtype=torch.float64))
                          for st in run.settings}, "skipped_images": pos.skipped_images}
    if recording:
        run.recorder.end_epoch()
    epoch_time = time.time() - t0
    means, skipped = _epoch_means(run, stats)
    run.skipped_images += skipped
    validate = (epoch + 1) % max(1, args.val_interval) == 0 or epoch + 1 == args.epochs
    try:
        val = {st.name: validate_setting(run, st, run.stop) if validate else {} for st in run.settings}
    except StopNow:  # trained, not validated: saved as the epoch's last step, the resumed run validates
        _stop(run, Position(epoch, run.steps_per_epoch, None, *_totals(stats), epoch_time))
    for st in run.settings:
        row = {"epoch": epoch + 1, "lr": st.optimizer.param_groups[0]["lr"], **means[st.name],
               "epoch_seconds": epoch_time, **val[st.name]}
        st.history.append(row)
        if info.is_main:
            log_epoch(st, row, epoch, args.epochs)
    stopping = bool(run.stop.agreed(D.all_reduce_max if info.distributed else None)) and epoch + 1 < args.epochs
    # a resumed run restarts after the last saved epoch and replays the same batches: saving less often only
    # costs recomputation (for many short epochs the writes would cost more than the training)
    save = (epoch + 1) % max(1, args.save_interval) == 0 or epoch + 1 == args.epochs or stopping
    if save:
        _save(run, Position(epoch + 1), students=True)
    if stopping:
        _stop(run, Position(epoch + 1), saved=True)


def _train_one_epoch(run: Run, epoch: int, pos: Position) -> tuple[dict, int]:
    """The epoch's steps from ``pos.step``; returns the statistics and the steps done (fewer than the epoch's when
    a stop was agreed after one of them)."""
    args, info, settings = run.args, run.info, run.settings
    teacher, cache, recorder, mixup, device = run.teacher, run.cache, run.recorder, run.mixup, info.device
    for st in settings:
        st.model.train()
    n_steps = run.steps_per_epoch
    sums = {st.name: pos.sums.get(st.name, torch.zeros(3, dtype=torch.float64)).clone() for st in settings}
    need_pre = any(wants_features(st.kd_loss)[0] for st in settings)
    need_stages = any(wants_features(st.kd_loss)[1] for st in settings)
    skipped_images = pos.skipped_images
    all_finite = (lambda ok: D.all_reduce_min(float(ok)) > 0) if info.distributed else None
    progress = Progress(n_steps, f"epoch {epoch + 1}/{args.epochs}", args.progress, args.log_interval, info.is_main,
                        run.out_root / PROGRESS_FILE, epoch + 1, args.epochs, start=pos.step)
    batches = iter(run.train_loader)  # its creation draws from torch's RNG: restore the states after it
    if pos.rng is not None:
        set_rng_state(pos.rng)
    step = pos.step
    for step, (x, y, positions, index, bad) in enumerate(batches, start=pos.step):
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
        step += 1
        if run.heartbeat is not None:
            run.heartbeat.where = f"epoch {epoch + 1} step {step}"
        if step < n_steps and run.stop.agreed(D.all_reduce_max if info.distributed else None):
            break
    progress.close()
    return {"sums": sums, "skipped_images": skipped_images}, step


def _totals(stats: dict) -> tuple[dict, int]:
    """The epoch's statistics so far summed over the ranks (what a mid-epoch checkpoint keeps, on rank 0)."""
    sums = {k: D.all_reduce_sum(v) for k, v in stats["sums"].items()}
    skipped = int(D.all_reduce_sum(torch.tensor([float(stats["skipped_images"])]))[0].item())
    return sums, skipped


def _epoch_means(run: Run, stats: dict) -> tuple[dict, int]:
    """Each setting's mean train losses over the epoch's steps and ranks, and the images skipped."""
    skipped = int(D.all_reduce_sum(torch.tensor([float(stats["skipped_images"])]))[0].item())
    out = {}
    for st in run.settings:
        s = D.all_reduce_sum(stats["sums"][st.name]) / (run.steps_per_epoch * run.info.world_size)
        out[st.name] = {"train_loss": s[0].item(), "train_ori_loss": s[1].item(), "train_kd_loss": s[2].item()}
    return out, skipped


def _save(run: Run, pos: Position, students: bool = False) -> None:
    """Every rank: last.pth at ``pos`` (mid-epoch with every rank's RNG states), and at an epoch's end the students
    first, so that last.pth, written last, never points past students that a full disk kept from being written."""
    rngs = D.all_gather_object({"position": [pos.epoch, pos.step], **rng_state()}) if pos.step else None
    if rngs is not None and any(r["position"] != [pos.epoch, pos.step] for r in rngs):  # the agreement failed
        raise RuntimeError(f"the ranks stopped at different steps: {[r['position'] for r in rngs]}")
    if run.recorder is not None and pos.step:
        run.recorder.flush()
    if run.info.is_main:
        if students:
            for st in run.settings:
                save_students(st, run.args)
        save_last(run.ckpt_path, pos, run.settings, run.args, run.info.world_size, rngs)
        run.saved = pos
    D.barrier()


def _stop(run: Run, pos: Position, saved: bool = False) -> None:
    """Save where the run is (unless just saved) and end it with the line that says how to go on."""
    if not saved:
        _save(run, pos)
    where = f"epoch {pos.epoch + 1}, step {pos.step} of {run.steps_per_epoch}" if pos.step else \
        f"epoch {pos.epoch} of {run.args.epochs}"
    if pos.step == run.steps_per_epoch:
        where += " (before its validation)"
    raise Stopped(f"stopped by {run.stop.name} after {where}: saved {run.ckpt_path}; continue with the same command "
                  "and --resume" if run.info.is_main else "", run.stop.signum)


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
        with atomic_file(run.out_root / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
    D.barrier()
    if run.heartbeat is not None:  # every rank is past the last collective: ending ranks are not lost ones
        run.heartbeat.stop()
    D.cleanup()
    return summary
