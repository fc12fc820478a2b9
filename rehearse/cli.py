"""What ``python tools/rehearse.py`` does once its arguments are parsed: the profile, the data plan (stand-ins or
views of the user's data, checked first), the paths, and the run with its report.

Why here: tools/rehearse.py stays its parser, and this logic is importable and testable in-process.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

from common.io import UserError

ROOT = Path(__file__).resolve().parent.parent


def paper_configs() -> list[Path]:
    """The paper's detection configs (configs/detection/*.py), relative to the repository."""
    return sorted(p.relative_to(ROOT) for p in (ROOT / "configs" / "detection").glob("*.py"))


def run_rehearsal(a: argparse.Namespace, argv: list[str] | None = None) -> dict | None:
    """tools/rehearse.py's arguments -> the report (None for --list); exits 1 when a path failed."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # mmpretrain's import, once per config
    from .profiles import build_profile, gpu_count
    name = a.profile if a.profile != "auto" else ("gpu" if gpu_count() else "cpu")
    profile = build_profile(name, a.nproc, a.batch_size, a.steps, a.det_batch, a.det_iters, a.val_images,
                            a.det_val_images, a.workers)
    if a.gpus < 1:
        raise UserError("--gpus must be at least 1")
    for d, what in ((a.imagenet, "--imagenet"), (a.coco, "--coco")):
        if d is not None and not Path(d).is_dir():
            raise UserError(f"{what} {d}: no such folder")
    if getattr(a, "imagenet_dataset", "") and not a.imagenet:
        raise UserError("--imagenet-dataset names the container of --imagenet: give --imagenet too")
    if a.teacher_checkpoint and not Path(a.teacher_checkpoint).is_file():
        raise UserError(f"--teacher-checkpoint {a.teacher_checkpoint}: no such file")
    configs = [Path(c) for c in a.detection_config] if a.detection_config else paper_configs()
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        raise UserError(f"detection config not found: {', '.join(missing)}")
    out = Path(a.out)
    command = shlex.join(["python", "tools/rehearse.py", *(sys.argv[1:] if argv is None else argv)])

    from . import paths as P
    from .report import write
    from .runner import run_all
    plan, notes = plan_data(a, profile, out, configs, dry=True)
    selected = P.select(P.build(profile, plan), a.only)
    if not selected:
        raise UserError(f"--only {' '.join(a.only)} matches no path (see --list)")
    if a.list:
        for path in selected:
            print(f"{path.id}: {path.title}" + (f" [{path.error}]" if path.error else ""))
            for s in path.steps:
                print(f"    {s.job.command(profile.launcher, profile.nproc)}")
        return None
    t0 = time.time()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    groups = {x.group for x in selected}
    plan, notes = plan_data(a, profile, out, configs, dry=False, need_coco="detection" in groups)
    selected = P.select(P.build(profile, plan), a.only)
    meta = {"command": command, "profile": profile.name, "profile_changes": profile.describe(),
            "machine": machine(), "cpus": os.cpu_count(), "started": started, "gpus": a.gpus, "data_notes": notes,
            "imagenet_images": plan.imagenet_images, "coco_images": plan.coco_images}
    print(f"rehearsal ({profile.name} profile): {len(selected)} paths -> {out}", flush=True)

    def on_row(rows):
        write(out, {**meta, "seconds": round(time.time() - t0, 1)}, rows)

    rows = run_all(selected, profile, out, a.gpus, on_row, a.timeout, a.verbose)
    rep = write(out, {**meta, "seconds": round(time.time() - t0, 1)}, rows)
    print(f"report: {out / 'report.md'} ({len(rows) - len(rep['failed'])} of {len(rows)} paths ok, "
          f"{time.time() - t0:.0f} s)")
    if rep["failed"]:
        print(f"failed: {', '.join(rep['failed'])}", file=sys.stderr)
        sys.exit(1)
    return rep


def machine() -> str:
    s = f"{os.cpu_count()} CPUs"
    try:
        import torch
        if torch.cuda.is_available():
            s += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return s


def plan_data(a: argparse.Namespace, profile, out: Path, configs: list[Path], dry: bool, need_coco: bool = True):
    """Where each command reads its data; unless ``dry``, the stand-ins and views are written (once) and the
    user's data is checked (preflight). Returns the Plan and the report's notes on the data."""
    from . import data as D
    from .paths import RECIPES, TEACHER, Plan, detection_images
    data = out / "data"
    notes: list[str] = []
    per_step = (profile.distill_batch or 256) * profile.nproc * profile.distill_steps
    # ---- ImageNet
    a2 = ROOT / RECIPES["a2"]
    user_ds = dataset = getattr(a, "imagenet_dataset", "") or ""
    container = "folder"
    if a.imagenet or getattr(a, "container", "folder") != "folder":
        from distill.containers import kind_of
        container = kind_of(a.imagenet, "train", dataset) if a.imagenet else a.container
    readers = profile.nproc * max(1, profile.workers)
    if a.imagenet and container != "folder":
        from . import containers as C
        imagenet, dataset = C.located(container, data / f"imagenet-view/classification-{container}",
                                      data / "imagenet-view")
        classes, images = D.IMAGENET_CLASSES, D.IMAGENET_TRAIN_IMAGES
        if not dry:
            pf = C.preflight(a.imagenet, user_ds, a2)
            classes = pf["train"]["classes"] or classes
            images = pf["train"]["images"]
            imagenet, dataset = C.view(a.imagenet, user_ds, data / "imagenet-view", math.ceil(per_step / classes),
                                       profile.val_images, readers)
            notes.append(f"ImageNet ({container}): {a.imagenet} {user_ds} "
                         f"(preflight {pf['checked_seconds']} s): train {pf['train']['classes']} classes, "
                         f"{images:,} images, val {pf['val']['images']:,} images; both splits opened through timm's "
                         f"reader, {pf['train']['decoded']} train images decoded")
            notes.append(_loader_note(pf["loader"], "A2 training view"))
            notes.append(f"runs read a view of it in the same container: {imagenet} {dataset} "
                         f"({math.ceil(per_step / classes)} train image(s) per class, {profile.val_images} val images)")
    elif a.imagenet:
        imagenet = data / "imagenet-view"
        classes, images = D.IMAGENET_CLASSES, D.IMAGENET_TRAIN_IMAGES
        if not dry:
            classes = len([p for p in (Path(a.imagenet) / "train").iterdir() if p.is_dir()]) \
                if (Path(a.imagenet) / "train").is_dir() else 0
            if classes:  # the view first, so that the loader is timed on it (the checks read the whole folder)
                D.imagenet_view(a.imagenet, imagenet, math.ceil(per_step / classes), profile.val_images)
            pf = D.preflight_imagenet(a.imagenet, a2, timing_root=imagenet)
            images = pf["train"]["images"]
            notes.append(f"ImageNet: {a.imagenet} (preflight {pf['checked_seconds']} s): train {classes} classes, "
                         f"{images:,} images (mean size {pf['train']['mean_size']}), val {pf['val']['classes']} "
                         f"classes, {pf['val']['images']:,} images; every class folder listed, one image each decoded")
            notes.append(_loader_note(pf["loader"], "A2 training view"))
            notes.append(f"runs read a view of it: {imagenet} (symlinks, {math.ceil(per_step / classes)} train "
                         f"image(s) per class, {profile.val_images} val images)")
    else:
        imagenet = data / "imagenet"
        classes, images = D.IMAGENET_CLASSES, D.IMAGENET_TRAIN_IMAGES
        per_class = math.ceil(per_step / classes)
        if not dry:
            t = time.time()
            D.write_imagenet_standin(imagenet, per_class, profile.val_images)
            pf = D.preflight_imagenet(imagenet, a2)
            notes.append(f"ImageNet stand-in: {imagenet} ({classes} classes x {per_class} train image(s), "
                         f"{profile.val_images} val images, {D.IMAGENET_SIZE[0]}x{D.IMAGENET_SIZE[1]} JPEG; ready "
                         f"in {time.time() - t:.0f} s); projections use ImageNet's {images:,} train images")
            notes.append(_loader_note(pf["loader"], "A2 training view"))
        if container != "folder":  # the stand-in's class folders written as the chosen container (same bytes)
            from . import containers as C
            imagenet, dataset = C.located(container, data / f"imagenet-{container}/classification-{container}",
                                          data / f"imagenet-{container}")
            if not dry:
                imagenet, dataset = C.standin(data / "imagenet", data / f"imagenet-{container}", container, readers)
                notes.append(f"the stand-in as {container}: {imagenet} {dataset} (the same JPEG bytes)")
    # ---- COCO
    sizes = sorted(detection_images(configs, profile))
    coco: dict[int, Path] = {}
    coco_images = D.COCO_TRAIN_IMAGES
    src = Path(a.coco) if a.coco else data / "coco"
    for n in sizes:
        coco[n] = data / f"coco-view-{n}"
    if not dry and need_coco and sizes:
        t = time.time()
        r50 = ROOT / "configs" / "detection" / "mask-rcnn_r50_fpn_1x_coco.py"
        if a.coco:
            pf = D.preflight_coco(src, r50, data / "coco-timing")
            coco_images = pf["train"]["images"]
            notes.append(f"COCO: {src} (preflight {pf['checked_seconds']} s): train {pf['train']['images']:,} "
                         f"images / {pf['train']['annotations']:,} objects, val {pf['val']['images']:,} images, "
                         f"{pf['train']['categories']} categories; both annotation files checked, every image "
                         "file present")
        else:
            D.write_coco_standin(src, max(sizes), profile.det_val_images)
            pf = D.preflight_coco(src, r50, data / "coco-timing")
            notes.append(f"COCO stand-in: {src} ({max(sizes)} train / {profile.det_val_images} val images at "
                         f"{D.COCO_SIZE[0]}x{D.COCO_SIZE[1]}, polygon masks, COCO's 80 categories and ids; ready "
                         f"in {time.time() - t:.0f} s); projections use COCO's {coco_images:,} train images")
        notes.append(_loader_note(pf["loader"], "R50 1x training pipeline"))
        for n in sizes:
            D.coco_view(src, coco[n], n, profile.det_val_images)
        notes.append("detection runs read views of it: " + ", ".join(f"{coco[n]} ({n} train image(s))" for n in sizes))
    # ---- teacher
    if a.teacher_checkpoint:
        teacher = Path(a.teacher_checkpoint)
        notes.append(f"teacher: {teacher}")
    else:
        teacher = data / f"teacher-{TEACHER}-{classes}cls-random.pth"
        if not dry:
            write_random_teacher(teacher, classes)
            notes.append(f"teacher: {teacher} ({TEACHER}, random weights: the paper's architecture and cost, "
                         "not its accuracy)")
    plan = Plan(out=out, imagenet=imagenet, imagenet_images=images, coco=coco, coco_images=coco_images,
                teacher=teacher, configs=configs, imagenet_dataset=dataset)
    return plan, notes


def _loader_note(t: dict, what: str) -> str:
    return (f"loader throughput on these files ({what}, decode + augmentation, one worker): "
            f"{t['images_per_second_per_worker']} images/s ({t['samples']} images)")


def write_random_teacher(path: Path, num_classes: int) -> None:
    """The paper's teacher architecture with random weights (seeded), written once."""
    if path.is_file():
        return
    import torch

    from common.io import atomic_save
    from common.models import create_model

    from .paths import TEACHER
    torch.manual_seed(0)
    atomic_save(create_model(TEACHER, num_classes=num_classes).state_dict(), path)

