"""Evaluation: exact top-1/top-5 (and ReaL) over all ranks, a student's validation after an epoch (its val sets
and EMAs), and the teacher's own accuracy once before training.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.utils import accuracy

from common.signals import StopNow

from . import distributed as D
from .data import RealLabels, check_bad_files
from .features import Features
from .run_setup import Run
from .settings import Setting, ema_suffix


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
             channels_last: bool = False, real: RealLabels | None = None,
             skip_bad_images: bool = False, stop=None) -> dict[str, float]:
    """Exact top-1/top-5 over all ranks (each rank holds a disjoint slice of the split); ReaL when given.

    ``stop`` (a distill.stop.StopRequest): a signal ends the pass early on every rank with StopNow (the ranks hold
    different numbers of batches, so each stops locally and the flag travels with the sums)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(9, dtype=torch.float64)
    for x, y, _, index, bad in loader:
        if stop is not None and stop.signum:
            sums[8] = 1
            break
        sums[5] += check_bad_files(bad, skip_bad_images)
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = model(x)
        out = (out.logits if isinstance(out, Features) else out).float()  # the teacher wrapper gives Features
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
    if sums[8] > 0:
        raise StopNow
    n = max(sums[3].item(), 1)
    out = {"top1": 100 * sums[0].item() / n, "top5": 100 * sums[1].item() / n, "loss": sums[2].item() / n,
           "skipped_images": int(sums[5].item())}
    if real is not None:
        nr = max(sums[4].item(), 1)
        out.update(real_top1=100 * sums[6].item() / nr, real_top5=100 * sums[7].item() / nr)
    return out


def validate_setting(run: Run, st: Setting, stop=None) -> dict[str, float]:
    """val top-1/top-5/loss of the student (and ReaL), each extra val set, and each EMA (StopNow on a signal)."""
    args, device, amp = run.args, run.info.device, run.amp_dtype
    m = evaluate(st.module, run.val_loader, device, amp, args.channels_last, run.real, args.skip_bad_images, stop)
    row = dict(val_top1=m["top1"], val_top5=m["top5"], val_loss=m["loss"])
    if run.real is not None:
        row.update(val_real_top1=m["real_top1"], val_real_top5=m["real_top5"])
    for name, loader in run.extra_loaders:
        em = evaluate(st.module, loader, device, amp, args.channels_last, None, args.skip_bad_images, stop)
        row.update({f"{name}_top1": em["top1"], f"{name}_top5": em["top5"]})
    for i, ema in enumerate(st.emas):
        em = evaluate(ema.module, run.val_loader, device, amp, args.channels_last, None, args.skip_bad_images, stop)
        suffix = ema_suffix(args, i)
        row[f"ema{suffix}_top1"], row[f"ema{suffix}_top5"] = em["top1"], em["top5"]
    return row


def evaluate_teacher(run: Run) -> None:
    """The teacher's own val accuracy, once, before training (summary.json reports it): through the wrapper that
    teaches the students, so it sees their view as they do (re-normalised to its mean/std, resized by
    --teacher-resize), not the raw model on the student's input."""
    if run.teacher is None:
        return
    args = run.args
    run.teacher_metrics = evaluate(run.teacher, run.val_loader, run.info.device, run.teacher_amp,
                                   args.channels_last, run.real, args.skip_bad_images, run.stop)
    run.teacher.forwards = 0
    if run.info.is_main:
        precision = str(run.teacher_amp or torch.float32).replace("torch.", "")
        print(f"teacher {args.teacher} ({precision}): val top1 {run.teacher_metrics['top1']:.2f} "
              f"top5 {run.teacher_metrics['top5']:.2f}", flush=True)
