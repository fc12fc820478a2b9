"""What ``python tools/export_onnx.py`` does once its arguments are parsed: read the student, export, check and
verify it, benchmark it, and the INT8 variant with its report (what INT8 costs in top-1, output error, latency).

Why here: tools/export_onnx.py stays its parser, and this logic is importable and testable in-process.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.io import UserError, atomic_file


def run_export(a: argparse.Namespace) -> dict:
    """tools/export_onnx.py's arguments -> its report (also written to --json)."""
    if a.int8_val and not a.int8_calib:
        raise UserError("--int8-val needs --int8-calib DIR (the calibration images)")
    if a.int8_calib:  # folder mistakes fail in a second, before the model is built or exported
        from . import quantize as q
        calib = q.pick(q.list_images(a.int8_calib), a.calib_size)
        val = q.list_images(a.int8_val, "--int8-val folder") if a.int8_val else None
    from common.openmmlab import read_student

    from .onnx_export import benchmark, build_module, export, hw, verify
    from .vit_pyramid import build_pyramid, is_plain_vit
    sd = read_student(a.src, a.unsafe_load, a.ema)
    sizes = [int(s) for s in ([a.img_size] if isinstance(a.img_size, int) else a.img_size)]
    if len(sizes) not in (1, 2) or min(sizes) < 32:
        raise UserError(f"--img-size takes SIZE or HEIGHT WIDTH (at least 32), not {' '.join(map(str, sizes))}")
    pyramid = a.task == "backbone" and is_plain_vit(a.model)
    size = hw(sizes[0] if len(sizes) == 1 else tuple(sizes))
    if len(sizes) == 2 and not pyramid:
        raise UserError("--img-size HEIGHT WIDTH is for a ViT's detection pyramid (--task backbone); give one SIZE")
    if pyramid and a.int8_calib:
        raise UserError("INT8 is for classifiers and CNN backbones; a ViT's detection pyramid exports in fp32 only")
    a.img_size = size[0]  # one size from here on (INT8's preprocessing)
    if pyramid:  # ViTDet's backbone and pyramid, any multiple of 32 (a student's weights go through timm first)
        if any(s % 32 for s in size):
            raise UserError(f"--img-size {size[0]} {size[1]}: a detection pyramid takes multiples of 32")
        def student() -> dict | None:  # read through timm's filter, as every student file is
            return build_module(a.model, sd, "classifier", a.num_classes).state_dict() if sd else None
        module, threshold = build_pyramid(a.src, a.model, student, a.unsafe_load), 1e-3
        sizes_checked = [size, (size[0] + 32, max(32, size[1] - 64))]
    else:
        module, threshold = build_module(a.model, sd, a.task, a.num_classes, size[0]), 1e-4
        sizes_checked = [size, (size[0] + 32,) * 2] if a.dynamic_size else [size]
    if a.int8_val and a.task == "classifier":
        val = q.val_dataset(a.int8_val, module.num_classes)
    path = export(module, a.out, size if pyramid else size[0], a.dynamic_size, a.opset)
    print(f"exported {a.task} {a.model} -> {path} (onnx.checker full check passed)"
          + (", height and width dynamic" if pyramid else ""))
    report = {"onnx": str(path), "model": a.model, "task": a.task}
    if a.verify:
        diff = verify(module, path, size, sizes=sizes_checked)
        report["max_abs_diff"] = diff
        report["sizes_checked"] = [list(s) for s in sizes_checked]
        print(f"onnxruntime vs PyTorch: max abs diff {diff:.3g} (batch 1 and 3, sizes "
              + ", ".join(f"{h}x{w}" for h, w in sizes_checked) + ")")
        if diff > threshold:
            raise UserError(f"verification failed: max abs diff {diff:.3g} > {threshold:g}")
    if a.benchmark:
        b = benchmark(module, path, size)
        report.update(b)
        print(f"latency: onnxruntime {b['onnxruntime_ms']:.2f} ms, PyTorch {b['torch_ms']:.2f} ms, "
              f"ratio {b['onnx_over_torch']:.2f}")
    if a.int8_calib:
        report["int8"] = int8(a, module, path, calib, val)
    if a.json:
        with atomic_file(a.json, "w", what="report") as f:
            json.dump(report, f, indent=2)
    return report


def int8(a: argparse.Namespace, module, path: str | Path, calib: list, val) -> dict:
    """Quantize, then report what INT8 costs: top-1 (classifier with --int8-val), output error, latency."""
    from . import quantize as q
    tf, cfg = q.eval_transform(module, a.img_size, a.mean, a.std, a.crop_pct, a.interpolation)
    out = Path(path).with_name(Path(path).stem + ".int8.onnx")
    q.quantize(path, out, calib, tf)
    print(f"int8: {out} (QDQ, per-channel int8 weights, {len(calib)} calibration images from {a.int8_calib}; "
          f"onnx.checker full check passed)")
    print(f"int8 preprocessing: {a.img_size}x{a.img_size}, crop_pct {cfg['crop_pct']}, {cfg['interpolation']}, "
          f"mean {tuple(round(v, 4) for v in cfg['mean'])}, std {tuple(round(v, 4) for v in cfg['std'])}")
    rep = {"onnx": str(out), "calib_images": len(calib), "preprocessing": {k: cfg[k] for k in
           ("input_size", "crop_pct", "interpolation", "mean", "std")}}
    if a.task == "classifier" and val is not None:
        t = q.top1(path, out, val, tf)
        rep.update(t)
        print(f"int8 top-1 on {a.int8_val} ({t['images']} images): fp32 {t['top1_fp32']:.3f}, int8 "
              f"{t['top1_int8']:.3f} (change {100 * t['top1_change']:+.1f} points), agreement {t['agreement']:.3f}")
    images, where = calib, "calibration"
    if val is not None:
        images, where = (val if isinstance(val, list) else [Path(p) for p, _ in val.reader.samples]), "--int8-val"
    images = q.pick(images, 32)
    err = q.output_error(path, out, images, tf)
    rep["error"] = err
    print(f"int8 vs fp32 outputs on {len(images)} {where} images: " + ", ".join(
        f"{n} max abs {e['max_abs']:.3g} rel {100 * e['rel_l2']:.1f}%" for n, e in err.items()))
    lat = q.latency(path, out, a.img_size)
    rep.update(lat)
    print(f"int8 latency: fp32 {lat['fp32_ms']:.2f} ms, int8 {lat['int8_ms']:.2f} ms, ratio int8/fp32 "
          f"{lat['int8_over_fp32']:.2f} (onnxruntime CPU, batch 1, side by side)")
    return rep

