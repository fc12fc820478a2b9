#!/usr/bin/env python
"""`make bench`: ratios measured side by side in one run on this machine (never absolute targets in tests).

Writes work_dirs/bench/bench.json and prints a table. Small models and images, sized for 2 CPU cores.
  online_kd_over_floor        online KD step / (student training step + teacher inference), same batch
  cached_kd_over_plain        KD step with teacher logits replayed from a --record-teacher cache / plain step
  teacher_cache_mb_per_epoch  cache size for the bench's 10k samples (k = 10 classes), and for ImageNet-1k
                              (1.28 M images, top-10 of 1000)
  multi_student_over_separate two students from one teacher forward / two separate KD steps
  onnx_over_torch             onnxruntime / PyTorch eager latency of an exported backbone
  int8_over_fp32              onnxruntime latency of the INT8 (static QDQ) ResNet-18 classifier / its fp32 export
  coco_eval_over_pycocotools  tools/coco_eval.py (faster-coco-eval) / pycocotools on the same detections
  coco_eval_process_over_pycocotools_script  a whole `tools/coco_eval.py` process / a plain pycocotools script,
                              800 images, bbox + segm (bench/coco_process.py)
  coco_eval_help_seconds      wall time of `tools/coco_eval.py --help` (a start-up figure, not a ratio)
  replay_loader_over_timm     seconds per image, our replayable-view loader / timm's create_loader, A2
                              augmentation on ImageNet-size JPEGs, same workers (bench/loader.py)
  sample_mixup_over_plain_loader  our loader with --mixup-mode sample / without mixup
  images_per_s_per_worker_*, imagenet_epoch_minutes_16_workers_*  the loaders' throughput here, and an ImageNet
                              epoch (1.28 M images) projected to 16 such workers
  {tar,parquet,wds}_loader_over_folder  seconds per image, our training loader on that container / on the class
                              folders, the same JPEG bytes and A2 augmentation (bench/containers.py); with
                              images_per_s_per_worker_{folder,tar,parquet,wds} and each container's open time

A ratio is the median of its per-round ratios (both candidates timed in the same interleaved round), printed with
their interquartile range; a target is missed only when the whole range lies above it (q25 > target), met when the
median is at or below it, else within noise (bench/timing.py). Sizes, seconds of --help and projections have no
rounds of their own: no range, and their verdict follows the plain value. bench.json keeps the medians under
`ratios`, the ranges under `spread` ([q25, q75] or null) and the verdicts under `verdicts`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.timing import interleaved_rounds, medians, missed, ratio_spread, verdicts, with_spread  # noqa: E402
from common.environment import fingerprint, short  # noqa: E402


def bench_kd(repeats: int) -> dict:
    repeats = max(repeats, 20)  # a step is ~0.4 s here and the machine is noisy: 20 interleaved rounds
    import timm
    from distill.distiller import Distiller, kd_step
    from distill.losses import build_loss
    from distill.features import Features
    from distill.teacher import Teacher
    from distill.teacher_cache import TeacherCache, TeacherCacheWriter, bytes_per_position
    torch.manual_seed(0)
    n_cls, batch, n_samples = 10, 32, 10_000
    x = torch.randn(batch, 3, 64, 64)
    y = torch.randint(0, n_cls, (batch,))
    teacher = Teacher(timm.create_model("resnet34", num_classes=n_cls), *[(0.5,) * 3] * 4)
    kd = build_loss("kd")
    students = [Distiller(timm.create_model("resnet18", num_classes=n_cls), kd) for _ in range(2)]
    opts = [torch.optim.AdamW(s.student.parameters(), 1e-3) for s in students]
    ce = torch.nn.CrossEntropyLoss()

    # a real cache on disk, replayed through its memory map like a --teacher-cache run
    tmp = tempfile.TemporaryDirectory()
    fp = {"data": "bench", "num_samples": n_samples, "num_classes": n_cls, "view": {}}
    w = TeacherCacheWriter(tmp.name, fp, {"name": "resnet34"}, k=n_cls, positions=n_samples, is_main=True)
    w.begin_epoch(0)
    for start in range(0, n_samples, 1000):
        w.write(torch.arange(start, start + 1000), torch.randn(1000, n_cls))
    w.end_epoch()
    cache = TeacherCache(tmp.name, fp, epochs=1)
    g = torch.Generator().manual_seed(0)

    def plain(i=0):
        kd_step(students[i], opts[i], x, y, None, ce, 1.0, 0.0)

    def online(i=0):
        kd_step(students[i], opts[i], x, y, teacher(x), ce, 1.0, 1.0)

    def cached(i=0):
        positions = torch.randint(0, n_samples, (batch,), generator=g)
        kd_step(students[i], opts[i], x, y, Features(cache.logits(0, positions, x.device), None, None), ce, 1.0, 1.0)

    def two_shared():
        t = teacher(x)
        for i in range(2):
            kd_step(students[i], opts[i], x, y, t, ce, 1.0, 1.0)

    rounds = interleaved_rounds({"plain": plain, "teacher": lambda: teacher(x), "online": online, "cached": cached,
                                 "two_shared": two_shared, "two_separate": lambda: (online(0), online(1))}, repeats)
    tmp.cleanup()
    spread = {"online_kd_over_floor": ratio_spread(rounds, "online", ("plain", "teacher")),
              "cached_kd_over_plain": ratio_spread(rounds, "cached", "plain"),
              "multi_student_over_separate": ratio_spread(rounds, "two_shared", "two_separate")}
    return {**with_spread(spread),
            "teacher_cache_mb_per_epoch": n_samples * bytes_per_position(n_cls, n_cls) / 2**20,
            "teacher_cache_mb_per_epoch_imagenet_top10": 1_281_167 * bytes_per_position(10, 1000) / 2**20,
            "_seconds": medians(rounds)}


def ms(rounds: dict[str, list[float]]) -> dict[str, float]:
    """Median milliseconds per candidate, kept in the details beside the ratio."""
    return {f"{k}_ms": v * 1e3 for k, v in medians(rounds).items()}


def bench_onnx(repeats: int) -> dict:
    """export.onnx_export.benchmark's comparison (same session, input, warm-up), timed here in rounds: the
    export function reports medians only, the verdict needs the per-round ratios."""
    from export.onnx_export import build_module, export, onnx_session
    module = build_module("resnet18", None, "backbone", num_classes=10)
    x = torch.randn(1, 3, 224, 224)
    xn = x.numpy()
    with tempfile.TemporaryDirectory() as d:
        sess = onnx_session(export(module, Path(d) / "r18.onnx", img_size=224))

        def run_torch():
            with torch.inference_mode():
                module(x)

        rounds = interleaved_rounds({"torch": run_torch, "onnxruntime": lambda: sess.run(None, {"input": xn})},
                                    repeats, warmup=3)
    return {**with_spread({"onnx_over_torch": ratio_spread(rounds, "onnxruntime", "torch")}), "_ms": ms(rounds)}


def bench_int8(repeats: int) -> dict:
    import numpy as np
    from export import quantize as q
    from export.onnx_export import build_module, export
    from shapes.generate import ShapesSpec, make_classification
    module = build_module("resnet18", None, "classifier", num_classes=5)
    with tempfile.TemporaryDirectory() as d:
        make_classification(d, ShapesSpec(cls_train_per_class=4, cls_val_per_class=1), seed=0)
        path = export(module, Path(d) / "r18.onnx", img_size=224)
        int8 = q.quantize(path, Path(d) / "r18.int8.onnx", q.list_images(Path(d) / "train"),
                          q.eval_transform(module, 224)[0])
        # export.quantize.latency's comparison, timed here in rounds (it reports medians only)
        sessions = {"fp32": q.onnx_session(path), "int8": q.onnx_session(int8)}
        x = np.random.RandomState(0).randn(1, 3, 224, 224).astype(np.float32)
        rounds = interleaved_rounds({k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()},
                                    repeats, warmup=3)
    return {**with_spread({"int8_over_fp32": ratio_spread(rounds, "int8", "fp32")}), "_ms": ms(rounds)}


def bench_coco(repeats: int) -> dict:
    from shapes.generate import ShapesSpec, make_detection
    from shapes.detections import fake_detections
    from transfer.coco_eval import evaluate
    with tempfile.TemporaryDirectory() as d:
        make_detection(d, ShapesSpec(det_train=1, det_val=300), seed=0)
        gt = Path(d) / "annotations" / "instances_val2017.json"
        dt = Path(d) / "dt.json"
        dt.write_text(json.dumps(fake_detections(gt)))
        rounds = interleaved_rounds({"faster": lambda: evaluate(gt, dt, ("bbox", "segm"), verbose=False),
                                     "pycocotools": lambda: evaluate(gt, dt, ("bbox", "segm"), verbose=False,
                                                                     backend="pycocotools")}, repeats, warmup=1)
    return {**with_spread({"coco_eval_over_pycocotools": ratio_spread(rounds, "faster", "pycocotools")}),
            "_seconds": medians(rounds)}


def bench_loader(repeats: int) -> dict:
    from bench.loader import bench_loader as run
    return run(repeats)


def bench_containers(repeats: int) -> dict:
    from bench.containers import bench_containers as run
    return run(repeats)


def bench_coco_process(repeats: int) -> dict:
    from bench.coco_process import bench_coco_process as run
    return run(repeats)


BENCHES = {"kd": bench_kd, "onnx": bench_onnx, "int8": bench_int8, "coco": bench_coco,
           "coco_process": bench_coco_process, "loader": bench_loader, "containers": bench_containers}
TARGETS = {"online_kd_over_floor": 1.05, "cached_kd_over_plain": 1.05, "onnx_over_torch": 0.6,
           "coco_eval_over_pycocotools": 0.5, "replay_loader_over_timm": 1.05, "sample_mixup_over_plain_loader": 1.10,
           "coco_eval_process_over_pycocotools_script": 0.5, "coco_eval_help_seconds": 0.5,
           "tar_loader_over_folder": 1.05, "parquet_loader_over_folder": 1.05, "wds_loader_over_folder": 1.05}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="work_dirs/bench")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES),
                   help="run these benchmarks only (default: all)")
    a = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    res = {}
    for name in a.only:
        fn = BENCHES[name]
        t0 = time.time()
        res[name] = fn(a.repeats)
        print(f"{name}: done in {time.time() - t0:.0f}s", flush=True)
    flat = {k: v for r in res.values() for k, v in r.items() if not k.startswith("_")}
    spread = {k: None for k in flat}  # figures without rounds of their own (sizes, --help seconds, projections)
    spread.update({k: [s["q25"], s["q75"]] for r in res.values() for k, s in r.get("_spread", {}).items()})
    judged = verdicts(flat, TARGETS, spread)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = fingerprint()
    (out / "bench.json").write_text(json.dumps({"ratios": flat, "spread": spread, "verdicts": judged,
                                                "details": res, "targets": TARGETS, "environment": env}, indent=2))
    print(f"\nenvironment: {short(env)}")
    print(table(flat, spread, judged))
    print(f"\n{out / 'bench.json'}")
    print(f"\n{summary(judged)}")
    return flat


def summary(judged: dict[str, str]) -> str:
    """The last line: the targets missed by the IQR rule only; those within noise are named apart."""
    miss, noise = missed(judged), [k for k, v in judged.items() if v == "within noise"]
    line = f"targets missed (whole IQR above the target): {', '.join(miss)}" if miss else "no target missed"
    return line + (f"; within noise (median above, IQR reaching below): {', '.join(noise)}" if noise else "")


def table(flat: dict[str, float], spread: dict[str, list[float] | None], judged: dict[str, str]) -> str:
    """The printed table: a median is read with its IQR, so a verdict can be checked by eye."""
    rows = ["", "| figure | median | IQR | target | verdict |", "|---|---|---|---|---|"]
    for k, v in flat.items():
        iqr = f"[{spread[k][0]:.3f}, {spread[k][1]:.3f}]" if spread.get(k) else "-"
        tgt = f"<= {TARGETS[k]}" if k in TARGETS else "-"
        rows.append(f"| {k} | {v:.3f} | {iqr} | {tgt} | {judged.get(k, '-')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
