#!/usr/bin/env python
"""Top-1/top-5 of one or more trained models (students, teachers: any timm model) on a split of class folders, a
tar, the hub's parquet layout or WebDataset shards (docs/data.md).

    python tools/validate.py --data-dir data/imagenet --model resnet50 --checkpoint resnet50-83.078.pth
    python tools/validate.py --data-dir data/imagenet --model vit_tiny_patch16_224 --checkpoint a.pth \\
        --model convnextv2_tiny --checkpoint b.safetensors --results-file results.csv
    torchrun --nproc_per_node 8 tools/validate.py --data-dir data/imagenet --model local-dir:output/run/timm
    python tools/validate.py --dataset hfds/data/imagenet-1k --data-dir data/hf_cache --split validation \
        --model resnet50 --checkpoint resnet50-83.078.pth

A checkpoint is any file common.weights reads: our student.pth / last.pth, timm checkpoints (CheckpointSaver's
state_dict, state_dict_ema with --ema), .safetensors, a hub folder (model.safetensors + config.json), or a
model's original layout that timm maps (the official ConvNeXt-V2 release, BEiT / BEiT v2, DeiT). The eval
transform is timm's for the model (a hub folder: the run's own); --img-size, --crop-pct, --interpolation, --mean
and --std override it. Exact under torchrun (each rank evaluates its own slice; counts are summed).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402


class _InOrder(argparse.Action):
    """--model / --checkpoint also go into ``order``, so that each checkpoint pairs with the model before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])
        namespace.order = [*(getattr(namespace, "order", None) or []), (self.dest, values)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/validate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True,
                   help="ImageFolder root (ROOT/<split>/<class>/<image>, or the tar ROOT/<split>.tar); with --dataset: "
                        "the datasets cache (hfds/) or the folder of the shards (wds/)")
    p.add_argument("--dataset", default="", metavar="hfds/NAME|wds/NAME",
                   help="the hub's parquet layout (hfds/<folder or hub name>) or WebDataset shards (wds/<name>); "
                        "none for folders and tars")
    p.add_argument("--split", default="val", help="val (folders, tars); validation for the hub's layout and shards")
    p.add_argument("--class-map", default="", metavar="FILE",
                   help="the class order the models were trained with (timm's .txt class map, one class per line; "
                        "default: the class order of DATA_DIR/train (or train.tar) when it exists, else the "
                        "container's own: the split's classes, the parquet ClassLabel names, the shards' .cls values)")
    p.set_defaults(order=[])
    p.add_argument("--model", action=_InOrder, default=[], metavar="NAME",
                   help="timm model name (repeat, one per --checkpoint); local-dir:FOLDER for a hub folder")
    p.add_argument("--checkpoint", action=_InOrder, default=[], metavar="FILE",
                   help="weights of the --model before it (file or hub folder)")
    p.add_argument("--pretrained", action="store_true",
                   help="models without --checkpoint get timm's pretrained weights (needs network)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights when a checkpoint has them")
    p.add_argument("--batch-size", "-b", type=int, default=128)
    p.add_argument("--workers", "-j", type=int, default=4)
    p.add_argument("--img-size", type=int, default=None, help="default: the model's (pretrained cfg / config.json)")
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--interpolation", default=None, help="bicubic, bilinear, ...")
    p.add_argument("--mean", type=float, nargs=3, default=None)
    p.add_argument("--std", type=float, nargs=3, default=None)
    p.add_argument("--amp", action="store_true", help="autocast (bfloat16 on CPU, --amp-dtype on GPU)")
    p.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--real-labels", default="", metavar="REAL_JSON", help="ImageNet-ReaL labels for the split")
    p.add_argument("--extra-val", nargs="+", default=[], metavar="NAME=DIR",
                   help="more ImageFolders, e.g. imagenet-v2=/data/imagenetv2-matched-frequency")
    p.add_argument("--results-file", default="", help="write all rows to this .csv or .json file")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--unsafe-load", action="store_true", help="allow full pickles (can run code): trusted files only")
    return p


@cli_main
def main(argv=None):
    a = build_parser().parse_args(argv)
    from distill.validate import validate
    return validate(a)


if __name__ == "__main__":
    main()
