#!/usr/bin/env python
"""Export a distilled student to ONNX (classifier or backbone), check it, verify it in onnxruntime.

    python tools/export_onnx.py output/run/student.pth --model resnet50 --out r50.onnx --task backbone --verify
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.io import UserError, cli_main  # noqa: E402


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="last.pth / student.pth / any timm state dict (plain or wrapped)")
    p.add_argument("--model", required=True, help="timm model name")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--task", choices=["classifier", "backbone"], default="classifier")
    p.add_argument("--num-classes", type=int, default=None, help="default: from the checkpoint's classifier")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--dynamic-size", action="store_true", help="dynamic height/width (CNNs)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--ema", action="store_true", help="take EMA weights when present")
    p.add_argument("--verify", action="store_true", help="compare with PyTorch at batch 1 and 3; fail above 1e-4")
    p.add_argument("--benchmark", action="store_true", help="onnxruntime vs PyTorch eager latency, side by side")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.add_argument("--unsafe-load", action="store_true", help="allow full pickles: trusted files only")
    a = p.parse_args(argv)
    from export.onnx_export import benchmark, build_module, export, verify
    from transfer.convert import read_student
    sd = read_student(a.src, a.unsafe_load, a.ema)
    module = build_module(a.model, sd, a.task, a.num_classes, a.img_size)
    path = export(module, a.out, a.img_size, a.dynamic_size, a.opset)
    print(f"exported {a.task} {a.model} -> {path} (onnx.checker full check passed)")
    report = {"onnx": str(path), "model": a.model, "task": a.task}
    if a.verify:
        sizes = [a.img_size, a.img_size + 32] if a.dynamic_size else [a.img_size]
        diff = verify(module, path, a.img_size, sizes=sizes)
        report["max_abs_diff"] = diff
        print(f"onnxruntime vs PyTorch: max abs diff {diff:.3g} (batch 1 and 3, sizes {sizes})")
        if diff > 1e-4:
            raise UserError(f"verification failed: max abs diff {diff:.3g} > 1e-4")
    if a.benchmark:
        b = benchmark(module, path, a.img_size)
        report.update(b)
        print(f"latency: onnxruntime {b['onnxruntime_ms']:.2f} ms, PyTorch {b['torch_ms']:.2f} ms, "
              f"ratio {b['onnx_over_torch']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
