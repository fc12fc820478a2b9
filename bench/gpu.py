#!/usr/bin/env python
"""Images/s of one student on one GPU: plain step, online KD, KD from a teacher cache; GPU-bound and loader-bound.

    python bench/gpu.py                        # ResNet-50 student, BEiTv2-B teacher, 224 px, bf16, batch 256
    python bench/gpu.py --device cpu --student resnet18 --teacher resnet18 --img-size 64 --batch-size 8 \\
        --iters 2 --warmup 1 --images 16 --workers 0 --amp-dtype none      # the CPU smoke run of the tests

Every figure runs the project's own step (``distill.distiller.kd_step`` on a ``Distiller``, the frozen
``distill.teacher.Teacher``, the ``kd`` loss, timm's LAMB and the BCE hard-label loss of the A2 recipe), under
autocast and channels_last, with ``torch.backends.cudnn.benchmark``:

  plain       student training step, hard labels only (no teacher)
  online_kd   one teacher forward (random-weight timm --teacher, autocast as ``--teacher-amp auto``) + the KD step
  cached_kd   teacher logits replayed from a teacher cache on disk (top-10 of the classes, memory-mapped), + KD step

each measured twice:

  memory      one fixed random batch already on the device: the GPU's limit
  loader      batches from the real training loader (``distill.data.build_train_loader`` with the A2 recipe's
              flags and per-sample mixup: RandAugment m7, mixup 0.1 / cutmix 1.0, 3 repeats) over generated
              500x375 q90 JPEGs (``bench.jpegs``); ``loader_only`` is the loader alone (batches moved to the device)

The JPEG folder holds ``--images`` files; its sample list is repeated so that one epoch covers every timed batch
(no epoch restart inside a measurement; repeats get other augmentations, as ``--aug-repeats`` does). Loader
warm-up and timed batch counts are rounded up to multiples of ``--workers``: the workers deliver batches in
rounds, so a whole number of rounds is timed. Writes a JSON (``--out``) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.io import UserError, atomic_file, cli_main  # noqa: E402

NUM_CLASSES = 1000  # ImageNet-1k heads, whatever the class folders of the generated JPEGs
JPEG_CLASSES = 10
CACHE_TOPK = 10
RECIPE = ROOT / "configs" / "distill" / "a2.yaml"
MODES = ("plain", "online_kd", "cached_kd")
T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--iters", type=int, default=50, help="timed steps per figure")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before each figure")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader worker processes")
    p.add_argument("--images", type=int, default=2048, help="JPEGs to generate (reused when already there)")
    p.add_argument("--student", default="resnet50")
    p.add_argument("--teacher", default="beitv2_base_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16", "none"])
    p.add_argument("--out", default="work_dirs/gpu_bench/gpu_bench.json",
                   help="JSON written here; the JPEGs go to a jpegs/ folder next to it")
    p.add_argument("--skip-loader", action="store_true", help="in-memory figures only (no JPEGs, no workers)")
    return p


def check_device(name: str, amp: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: {str(e).splitlines()[0]}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU visible to torch {torch.__version__} "
                            f"(CUDA build {torch.version.cuda}); run on a GPU machine, or --device cpu for a smoke run")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        if amp == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"{torch.cuda.get_device_name(device)} has no bf16: use --amp-dtype float16")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: expected cuda, cuda:N or cpu")
    return device


def recipe_flags(a: argparse.Namespace, data_dir: str) -> list[str]:
    """tools/distill.py flags of the run this bench stands for: the A2 recipe, with replayable per-sample mixup."""
    flags = ["-c", str(RECIPE), "--data-dir", data_dir, "--model", a.student, "--mixup-mode", "sample",
             "--img-size", str(a.img_size), "--batch-size", str(a.batch_size), "--workers", str(a.workers),
             "--device", a.device, "--channels-last"]
    if a.amp_dtype != "none":
        flags += ["--amp", "--amp-dtype", a.amp_dtype]
    return flags


def round_up(n: int, m: int) -> int:
    return n if m <= 0 else max(m, math.ceil(n / m) * m)


class Timer:
    def __init__(self, device: torch.device, batch: int):
        self.device, self.batch = device, batch

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, label: str, step, warmup: int, iters: int) -> dict:
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        self.sync()
        t1 = time.perf_counter()
        for _ in range(iters):
            step()
        self.sync()
        t2 = time.perf_counter()
        ips = iters * self.batch / (t2 - t1)
        log(f"{label:<22} {ips:9.1f} images/s  ({iters} steps in {t2 - t1:.2f}s, {warmup} warm-up in {t1 - t0:.2f}s)")
        return {"images_per_s": ips, "seconds_per_step": (t2 - t1) / iters, "warmup": warmup, "iters": iters,
                "warmup_seconds": t1 - t0}


def write_cache(root: str, positions: int, teacher: str, precision: str, check_rows: int):
    """A teacher cache on disk as --record-teacher writes it (top-k of random logits); returns it opened for replay
    and the full logits of the first ``check_rows`` positions, to check the replay against."""
    from distill.teacher_cache import TeacherCache, TeacherCacheWriter
    fp = {"data": "gpu-bench", "num_samples": positions, "num_classes": NUM_CLASSES, "view": {}}
    w = TeacherCacheWriter(root, fp, {"name": teacher, "weights": "random", "precision": precision}, k=CACHE_TOPK,
                           positions=positions, is_main=True)
    g = torch.Generator().manual_seed(0)
    w.begin_epoch(0)
    kept = None
    for start in range(0, positions, 4096):
        rows = torch.arange(start, min(positions, start + 4096))
        logits = 3 * torch.randn(len(rows), NUM_CLASSES, generator=g)
        if kept is None:
            kept = logits[:check_rows].clone()
        w.write(rows, logits)
    w.end_epoch()
    return TeacherCache(root, fp, epochs=1), kept, w.meta["bytes_per_epoch"]


def replay_check(cache, recorded: torch.Tensor) -> float:
    """Max abs difference between the replayed top-k logits and the recorded ones (float16 storage: ~1e-3)."""
    rows = torch.arange(len(recorded))
    replayed = cache.logits(0, rows, torch.device("cpu"))
    values, indices = recorded.topk(cache.k, 1)
    if not torch.equal(replayed.topk(cache.k, 1).indices.sort(1).values, indices.sort(1).values):
        raise RuntimeError("the replayed teacher cache does not hold the recorded top-k classes")
    return (replayed.gather(1, indices) - values).abs().max().item()


def shm_warning(workers: int, batch: int, img_size: int) -> None:
    """Workers hand batches over in shared memory (2 in flight per worker): say so when /dev/shm looks too small."""
    if workers == 0 or not os.path.isdir("/dev/shm"):
        return
    need = 2 * workers * batch * 3 * img_size**2 * 4
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    if free < 1.25 * need:
        log(f"warning: /dev/shm has {free / 2**30:.1f} GiB free, the loader's batches in flight take about "
            f"{need / 2**30:.1f} GiB (workers may die of a bus error: fewer --workers or a larger /dev/shm)")


def check_args(a: argparse.Namespace) -> None:
    """One-line errors for sizes no figure can be measured with."""
    for flag in ("batch_size", "iters", "img_size", "images"):
        if getattr(a, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if a.warmup < 0 or a.workers < 0:
        raise UserError("--warmup and --workers must be >= 0")


@dataclass
class Setup:
    """The run's pieces as tools/distill.py builds them, shared by every measured step."""

    args: argparse.Namespace  # tools/distill.py's parsed flags
    device: torch.device
    gpu: str
    data_cfg: dict
    model: Any  # distill.distiller.Distiller around the student
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    hard: torch.nn.Module  # the hard-label loss
    ori_w: float
    kd_w: float
    teacher: Any  # distill.teacher.Teacher, random weights
    precision: str  # the teacher's autocast dtype


def build_setup(a: argparse.Namespace, device: torch.device, jpeg_root: Path) -> Setup:
    """The run's flags, student, optimizer, hard-label loss and teacher, so every figure times the real step."""
    import timm
    from timm.optim import create_optimizer_v2

    from common.models import create_model
    from distill.args import parse_args
    from distill.data import sample_mixup_active
    from distill.distiller import Distiller
    from distill.losses import build_loss
    from distill.run_setup import teacher_amp_dtype
    from distill.settings import hard_label_loss
    from distill.teacher import Teacher

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    log(f"{gpu}: torch {torch.__version__}, timm {timm.__version__}; {a.student} from {a.teacher}, "
        f"{a.img_size} px, batch {a.batch_size}, amp {a.amp_dtype}, channels_last")
    args = parse_args(recipe_flags(a, str(jpeg_root)))
    amp_dtype = None if a.amp_dtype == "none" else getattr(torch, a.amp_dtype)
    teacher_amp = teacher_amp_dtype(args.teacher_amp, amp_dtype, device)
    torch.manual_seed(args.seed)
    student = create_model(a.student, num_classes=NUM_CLASSES, img_size=args.img_size, drop_rate=args.drop,
                           drop_path_rate=args.drop_path or None)
    data_cfg = timm.data.resolve_data_config({}, model=student)
    data_cfg.update(input_size=(3, args.img_size, args.img_size), crop_pct=args.crop_pct,
                    interpolation=args.interpolation)
    data_cfg["test_input_size"] = (3, args.test_img_size or args.img_size, args.test_img_size or args.img_size)
    student = student.to(device).to(memory_format=torch.channels_last)
    model = Distiller(student, build_loss("kd", temperature=args.temperature).to(device), amp_dtype)
    optimizer = create_optimizer_v2(student, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None
    hard = hard_label_loss(args, sample_mixup_active(args))  # BCE on mixed soft targets (A2: bce_loss)

    t_model = create_model(a.teacher, pretrained=False, num_classes=NUM_CLASSES)
    t_cfg = timm.data.resolve_data_config({}, model=t_model)
    teacher = Teacher(t_model.to(memory_format=torch.channels_last), data_cfg["mean"], data_cfg["std"],
                      t_cfg["mean"], t_cfg["std"], amp_dtype=teacher_amp, channels_last=True).to(device)
    precision = str(teacher_amp or torch.float32).replace("torch.", "")
    log(f"models built: student {sum(p.numel() for p in student.parameters()) / 1e6:.1f} M params ({args.opt}, "
        f"{type(hard).__name__}), teacher {sum(p.numel() for p in t_model.parameters()) / 1e6:.1f} M params "
        f"({precision}, random weights)")
    return Setup(args, device, gpu, data_cfg, model, optimizer, scaler, hard, args.ori_loss_weight[0],
                 args.kd_loss_weight[0], teacher, precision)


def build_loader(a: argparse.Namespace, s: Setup, jpeg_root: Path,
                 steps: int) -> tuple[torch.utils.data.DataLoader, int]:
    """The real training loader over generated JPEGs, one epoch long enough for every figure's ``steps``
    batches; built before the cache, whose positions are this epoch's. Returns it and its positions."""
    from bench.jpegs import write_jpeg_folder
    from distill.data import build_dataset, build_train_loader

    t = time.time()
    write_jpeg_folder(jpeg_root, a.images, JPEG_CLASSES)
    log(f"{a.images} JPEGs (500x375 q90) ready in {jpeg_root} ({time.time() - t:.1f}s)")
    dataset = build_dataset(jpeg_root, s.args.train_split, is_training=True)
    batches = (len(MODES) + 1) * steps + 1  # loader_only + the three steps, one epoch
    files = dataset.samples
    dataset.samples = files * math.ceil(batches * a.batch_size / len(files))
    loader = build_train_loader(dataset, s.args, s.data_cfg, s.device, rank=0, world_size=1, num_classes=NUM_CLASSES)
    loader.sampler.set_epoch(0)
    return loader, loader.sampler.positions_per_epoch


class CachedTeacher:
    """Teacher logits replayed from a cache on disk, counting reads per figure kind (one per cached-KD step)."""

    def __init__(self, root: str, positions: int, a: argparse.Namespace, s: Setup):
        t = time.time()
        self.cache, recorded, self.bytes_per_epoch = write_cache(root, positions, a.teacher, s.precision,
                                                                 min(a.batch_size, 64))
        self.replay_diff = replay_check(self.cache, recorded)
        self.device, self.positions = s.device, positions
        self.reads = {"memory": 0, "loader": 0}
        log(f"teacher cache: top-{self.cache.k} of {NUM_CLASSES} for {positions} positions, "
            f"{self.bytes_per_epoch / 2**20:.1f} MB ({time.time() - t:.1f}s); "
            f"replayed top-k vs recorded: max abs diff {self.replay_diff:.2e}")

    def __call__(self, where: str, pos: torch.Tensor):
        from distill.features import Features
        self.reads[where] += 1
        return Features(self.cache.logits(0, pos, self.device), None, None)

    def summary(self) -> dict:
        return {"reads": self.reads, "positions": self.positions, "bytes_per_epoch": self.bytes_per_epoch,
                "replay_max_abs_diff": self.replay_diff}


def measure_memory(a: argparse.Namespace, s: Setup, cached: CachedTeacher, timer: Timer) -> dict:
    """The three steps on one fixed batch already on the device: the GPU's limit."""
    from timm.data.mixup import mixup_target

    from distill.distiller import kd_step

    x = torch.randn(a.batch_size, 3, a.img_size, a.img_size, device=s.device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (a.batch_size,))
    y = mixup_target(labels, NUM_CLASSES, lam=0.7).to(s.device)  # soft targets, as the mixing loader gives
    index = torch.arange(a.batch_size, device=s.device)
    step_no = [0]

    def next_positions() -> torch.Tensor:  # consecutive rows, as one process reads them in a real epoch
        start = step_no[0] * a.batch_size
        step_no[0] += 1
        return torch.arange(start, start + a.batch_size) % cached.positions

    m, opt, hard, ori_w, kd_w, scaler = s.model, s.optimizer, s.hard, s.ori_w, s.kd_w, s.scaler
    steps = {
        "plain": lambda: kd_step(m, opt, x, y, None, hard, ori_w, 0.0, scaler, index=index),
        "online_kd": lambda: kd_step(m, opt, x, y, s.teacher(x), hard, ori_w, kd_w, scaler, index=index),
        "cached_kd": lambda: kd_step(m, opt, x, y, cached("memory", next_positions()), hard, ori_w, kd_w, scaler,
                                     index=index),
    }
    return {mode: timer(f"{mode} / memory", steps[mode], a.warmup, a.iters) for mode in MODES}


def measure_loader(a: argparse.Namespace, s: Setup, cached: CachedTeacher, loader: torch.utils.data.DataLoader,
                   lw: int, li: int, timer: Timer) -> tuple[dict, str | None]:
    """The loader alone and the three steps fed by it, as engine._train_one_epoch consumes it; when the loader
    fails (e.g. a worker killed for shared memory) no loader figures, and the error, so the others are kept."""
    from distill.data import check_bad_files
    from distill.distiller import kd_step

    it = iter(loader)

    def loader_step(mode: str) -> None:
        xb, yb, pos, idx, bad = next(it)
        check_bad_files(bad, s.args.skip_bad_images)
        xb, yb = xb.to(s.device, non_blocking=True), yb.to(s.device, non_blocking=True)
        idx = idx.to(s.device, non_blocking=True)
        xb = xb.contiguous(memory_format=torch.channels_last)
        if mode == "loader_only":
            return
        t = None
        if mode == "online_kd":
            t = s.teacher(xb)
        elif mode == "cached_kd":
            t = cached("loader", pos)
        kd_step(s.model, s.optimizer, xb, yb, t, s.hard, s.ori_w, s.kd_w if t is not None else 0.0, s.scaler,
                index=idx)

    log(f"loader: {a.workers} workers, {len(loader)} batches per epoch; {lw} warm-up + {li} timed batches "
        f"per figure")
    shm_warning(a.workers, a.batch_size, a.img_size)
    figures = {}
    try:
        for mode in ("loader_only",) + MODES:
            figures[mode] = timer(f"{mode} / loader", lambda m=mode: loader_step(m), lw, li)
    except (RuntimeError, OSError) as e:
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log(f"the loader figures stopped: {error}")
        return {}, error
    return figures, None


def ratios_of(ips: dict[str, dict[str, float]]) -> dict[str, float]:
    """KD's cost against the plain step, and the loader's against the in-memory batch, per figure."""
    ratios = {}
    for w in ("memory", "loader"):
        if ips[w]:
            ratios[f"online_kd_over_plain_{w}"] = ips[w]["online_kd"] / ips[w]["plain"]
            ratios[f"cached_kd_over_plain_{w}"] = ips[w]["cached_kd"] / ips[w]["plain"]
    if ips["loader"]:
        for m in MODES:
            ratios[f"{m}_loader_over_memory"] = ips["loader"][m] / ips["memory"][m]
    return ratios


def build_result(a: argparse.Namespace, s: Setup, figures: dict, loader_error: str | None, cached: CachedTeacher,
                 lw: int, li: int) -> dict:
    """The JSON of the bench: the figures with everything they depend on (versions, device, configuration)."""
    import timm

    ips = {w: {m: f["images_per_s"] for m, f in figs.items()} for w, figs in figures.items()}
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(s.device), "gpu": s.gpu, "torch": torch.__version__, "timm": timm.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if s.device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
        "config": {"student": a.student, "teacher": a.teacher, "img_size": a.img_size, "batch_size": a.batch_size,
                   "amp_dtype": a.amp_dtype, "teacher_precision": s.precision, "channels_last": True,
                   "cudnn_benchmark": True, "optimizer": s.args.opt, "hard_loss": type(s.hard).__name__,
                   "kd_loss": "kd", "num_classes": NUM_CLASSES, "cache_topk": cached.cache.k, "iters": a.iters,
                   "warmup": a.warmup, "workers": a.workers, "images": None if a.skip_loader else a.images,
                   "loader_warmup": None if a.skip_loader else lw, "loader_iters": None if a.skip_loader else li,
                   "recipe_flags": recipe_flags(a, "JPEG_DIR")},
        "images_per_s": ips, "ratios": ratios_of(ips), "figures": figures, "loader_error": loader_error,
        "cache": cached.summary(),
        "seconds": time.time() - T0,
    }


def write_result(out: Path, result: dict) -> None:
    """The JSON (atomically: an interrupted bench leaves the previous one) and the markdown table for the docs."""
    with atomic_file(out, "w") as f:
        json.dump(result, f, indent=2)
    print()
    print(markdown(result))
    print(f"\nwrote {out} ({result['seconds']:.0f}s)")


@cli_main
def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    check_args(a)
    device = check_device(a.device, a.amp_dtype)
    torch.backends.cudnn.benchmark = True
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jpeg_root = out.parent / "jpegs"
    s = build_setup(a, device, jpeg_root)

    lw, li = round_up(a.warmup, a.workers), round_up(a.iters, a.workers)
    loader, positions = None, (a.warmup + a.iters) * a.batch_size
    if not a.skip_loader:
        loader, positions = build_loader(a, s, jpeg_root, lw + li)
    with tempfile.TemporaryDirectory(prefix="gpu_bench_cache_") as tmp:
        cached = CachedTeacher(tmp, positions, a, s)
        timer = Timer(device, a.batch_size)
        figures = {"memory": measure_memory(a, s, cached, timer), "loader": {}}
        loader_error = None
        if loader is not None:
            figures["loader"], loader_error = measure_loader(a, s, cached, loader, lw, li, timer)
    result = build_result(a, s, figures, loader_error, cached, lw, li)
    write_result(out, result)
    return result


def markdown(r: dict) -> str:
    c, ips, rat = r["config"], r["images_per_s"], r["ratios"]
    loader = bool(ips["loader"])

    def f(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)

    amp = "fp32" if c["amp_dtype"] == "none" else f"{c['amp_dtype']} autocast"
    head = (f"{c['student']}, {c['img_size']} px, batch {c['batch_size']}, {amp}, channels_last, "
            f"{c['optimizer']} + {c['hard_loss']}; {r['gpu']}, torch {r['torch']}, timm {r['timm']}"
            + (f"; loader: {c['workers']} workers of {r['cpu_count']} CPUs" if loader else ""))
    rows = [head, "", "| step | in-memory images/s | loader images/s | loader / in-memory |", "|---|---|---|---|"]
    names = {"plain": "plain (hard labels)", "online_kd": f"online KD ({c['teacher']}, {c['teacher_precision']})",
             "cached_kd": f"cached KD (top-{c['cache_topk']} of {c['num_classes']})"}
    for m in MODES:
        rows.append(f"| {names[m]} | {f(ips['memory'][m])} | {f(ips['loader'].get(m))} | "
                    f"{f(rat.get(f'{m}_loader_over_memory'), '{:.2f}')} |")
    for m in ("online_kd", "cached_kd"):
        rows.append(f"| {m.replace('_kd', ' KD')} / plain | {f(rat[f'{m}_over_plain_memory'], '{:.2f}')} | "
                    f"{f(rat.get(f'{m}_over_plain_loader'), '{:.2f}')} | - |")
    if loader:
        rows.append(f"| loader alone (batches to the device) | - | {f(ips['loader']['loader_only'])} | - |")
    if r.get("loader_error"):
        rows.append(f"\nno loader figures: {r['loader_error']}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
