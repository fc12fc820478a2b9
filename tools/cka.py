#!/usr/bin/env python
"""Linear CKA between every stage of model A and every stage of model B (the paper's Fig. 2).

    python tools/cka.py --data-dir IMAGENET --split val --model-a resnet50 --checkpoint-a output/kd/student.pth \\
        --model-b resnet50 --checkpoint-b output/plain/student.pth --max-images 5000 --out work_dirs/cka

Stages are timm's ``forward_intermediates(x, indices=--stages)``. Each stage map is flattened per sample (as in
the CKA literature) or, with ``--pool``, global-average-pooled. CKA is the minibatch estimator of Nguyen et
al. (2021): the unbiased HSIC of each batch's b x b Gram matrices, averaged over batches, so memory does not
grow with the feature size or the number of images. Images are drawn in a seeded random order (batches of a
class-sorted folder would measure within-class similarity only); --max-images takes the first N of that order.
Batches of fewer than 4 images are skipped (the unbiased HSIC needs 4).

Writes OUT/cka.csv (rows: A's stages, columns: B's stages), OUT/cka.png (annotated heatmap) and OUT/cka.json.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.io import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="ImageFolder root (ROOT/<split>/<class>/<image>)")
    p.add_argument("--split", default="val")
    p.add_argument("--model-a", required=True, help="timm name of model A")
    p.add_argument("--checkpoint-a", default=None, help="A's weights: student.pth, last.pth or any timm state dict")
    p.add_argument("--model-b", required=True)
    p.add_argument("--checkpoint-b", default=None)
    p.add_argument("--pretrained", action="store_true", help="a model without checkpoint gets timm's pretrained "
                   "weights (needs network)")
    p.add_argument("--num-classes", type=int, default=None, help="default: from each checkpoint's classifier")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.95)
    p.add_argument("--interpolation", default="bicubic")
    p.add_argument("--batch-size", type=int, default=64, help="CKA batch (>= 4; Nguyen et al. use 256+)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images (seeded sample)")
    p.add_argument("--stages", type=int, default=4, help="forward_intermediates(indices=N)")
    p.add_argument("--pool", action="store_true", help="global-average-pool stage maps instead of flattening")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--unsafe-load", action="store_true", help="allow full pickles for checkpoints: trusted files only")
    a = p.parse_args(argv)
    from distill.cka_run import compare
    return compare(a)


if __name__ == "__main__":
    main()
