#!/usr/bin/env python
"""Convert a distilled timm student (or an OpenMMLab classifier/backbone) into an mmdet/mmpretrain backbone checkpoint.

    python tools/convert.py output/run/student.pth work_dirs/r50_backbone.pth --model resnet50 --verify
    python tools/convert.py mmpretrain_resnet50_in1k.pth work_dirs/r50_backbone.pth --verify

SRC: a timm state dict (plain, DDP 'module.', {'model': ...}, {'state_dict': ...}, timm CheckpointSaver files),
a .safetensors file or a timm hub folder (model.safetensors + config.json), our run files, a model's original
layout that timm maps (the official ConvNeXt-V2 release: pass --model), or an OpenMMLab file ('state_dict' with 'backbone.*', optional 'head.*', 'meta': an mmpretrain
classifier, an mmdet/mmpretrain backbone, a detector) for ResNet, ResNet-D and ConvNeXt(-V2), and timm's
plain ViTs (vit_tiny/small/base/large_patch16_*: the ViTDet backbone of transfer/vitdet.py). An mmdet-layout
backbone comes out unchanged.

DST holds {'state_dict': {'backbone.*': ...}}: use it as
init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.').
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import UserError, cli_main  # noqa: E402


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="last.pth / student.pth / student_ema.pth, any timm state dict (plain or wrapped), "
                   ".safetensors, a hub folder, an original-layout file timm maps, or an OpenMMLab checkpoint")
    p.add_argument("dst", help="output backbone checkpoint")
    p.add_argument("--model", default=None, help="timm model name (default: inferred from the checkpoint)")
    p.add_argument("--ema", action="store_true", help="take the EMA weights when the checkpoint has them")
    p.add_argument("--verify", action="store_true", help="compare every stage output with timm's (fails above 1e-4; "
                   "a ViT: its last map with global attention, and the windowed backbone with a per-window reference)")
    p.add_argument("--verify-size", type=int, default=224)
    p.add_argument("--unsafe-load", action="store_true", help="allow full pickles (can run code): trusted files only")
    a = p.parse_args(argv)
    from transfer.convert import (get_arch, read_student, student_model, to_timm_layout, verify, verify_checks,
                                  write_backbone)
    if a.model:
        get_arch(a.model)  # an architecture without an mm counterpart fails before the file is read
    sd = read_student(a.src, a.unsafe_load, a.ema)
    model = student_model(a.src, sd, a.model)
    sd = to_timm_layout(sd, model)
    model, dst = write_backbone(sd, a.dst, model, source=a.src)
    print(f"converted {a.src} ({model}) -> {dst}")
    if a.verify:
        diffs = verify(sd, model, img_size=a.verify_size)
        print("max abs diff: " + ", ".join(f"{c} {d:.3g}" for c, d in zip(verify_checks(model), diffs)))
        if max(diffs) > 1e-4:
            raise UserError(f"verification failed: max abs diff {max(diffs):.3g} > 1e-4")
        print(f"verified: max abs diff {max(diffs):.3g} <= 1e-4")


if __name__ == "__main__":
    main()
