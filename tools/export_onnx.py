#!/usr/bin/env python
"""Export a distilled student to ONNX (classifier or backbone), check it, verify it in onnxruntime.

    python tools/export_onnx.py output/run/student.pth --model resnet50 --out r50.onnx --task backbone --verify
    python tools/export_onnx.py work_dirs/vit-s_det/iter_22125.pth --model vit_small_patch16_224 --task backbone \
        --img-size 800 1024 --out vit-s_pyramid.onnx --verify     # ViTDet pyramid, dynamic height/width

INT8 (onnxruntime static QDQ quantization) as well, calibrated on images preprocessed like the fp32 model's
eval transform, with the top-1 change on a val folder and the INT8/fp32 latency ratio:

    python tools/export_onnx.py student.pth --model resnet50 --out r50.onnx --int8-calib data/train --int8-val data/val
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="last.pth / student.pth / any timm state dict (plain or wrapped)")
    p.add_argument("--model", required=True, help="timm model name")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--task", choices=["classifier", "backbone"], default="classifier")
    p.add_argument("--num-classes", type=int, default=None, help="default: from the checkpoint's classifier")
    p.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="SIZE",
                   help="SIZE, or HEIGHT WIDTH for a ViT's detection pyramid (--task backbone; e.g. 800 1024)")
    p.add_argument("--dynamic-size", action="store_true", help="dynamic height/width (CNNs)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--ema", action="store_true", help="take EMA weights when present")
    p.add_argument("--verify", action="store_true", help="compare with PyTorch at batch 1 and 3; fail above 1e-4")
    p.add_argument("--benchmark", action="store_true", help="onnxruntime vs PyTorch eager latency, side by side")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.add_argument("--unsafe-load", action="store_true", help="allow full pickles: trusted files only")
    g = p.add_argument_group("INT8 (onnxruntime static quantization, QDQ, per-channel weights)")
    g.add_argument("--int8-calib", default=None, metavar="DIR",
                   help="calibration images (any depth, e.g. a train split); writes <out stem>.int8.onnx")
    g.add_argument("--int8-val", default=None, metavar="DIR",
                   help="val split (DIR/<class>/<image>): top-1 of fp32 vs INT8 (classifier); error images (backbone)")
    g.add_argument("--calib-size", type=int, default=64, help="calibration images, spread over DIR's classes")
    g.add_argument("--mean", type=float, nargs=3, default=None, help="INT8 preprocessing; default: the model's cfg")
    g.add_argument("--std", type=float, nargs=3, default=None)
    g.add_argument("--crop-pct", type=float, default=None)
    g.add_argument("--interpolation", default=None)
    a = p.parse_args(argv)
    from export.cli import run_export
    return run_export(a)


if __name__ == "__main__":
    main()
