#!/usr/bin/env python
"""Distill timm students from a teacher (vanilla KD and the paper's baselines), or train plainly.

    python tools/distill.py --data-dir data/imagenet --model resnet50 --teacher beitv2_base_patch16_224 \\
        --teacher-pretrained -c configs/distill/a2.yaml --output output
    torchrun --nproc_per_node 8 tools/distill.py ...   # DDP: nccl on GPU, gloo on CPU
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.args import parse_args  # noqa: E402
from distill.engine import train  # noqa: E402
from common.io import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
