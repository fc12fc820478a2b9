# Mask R-CNN, ViT-T/16 (vanilla-KD student, vit_tiny_patch16_224) + ViTDet's simple feature pyramid, LSJ at 1024,
# a 1x-like schedule: 12 epochs (22,125 iterations of 64 images), x0.1 steps after epochs 8 and 11 on COCO 2017.
# No paper number: the VanillaKD paper's Table 11 detects with ResNet-50 and ConvNeXtV2-T only.
# Settings: ViTDet's Mask R-CNN recipe (transfer/vitdet.py; _base_/schedule_vitdet_lsj.py) with drop path 0.1,
# window 14, global blocks 2/5/8/11, 4 images/GPU x 16 GPUs. Deliberate deviations from ViTDet (which publishes
# ViT-B/L/H configs only): its ViT-B settings for this ViT-T; no relative position biases; the student's own
# normalisation (mean = std = 0.5). AMP (AmpOptimWrapper) needs a GPU; for a CPU dry run pass --no-amp.
_base_ = './mask-rcnn_vit-s_simple-fpn_lsj-12e_coco.py'

model = dict(backbone=dict(model='vit_tiny_patch16_224'), neck=dict(in_channels=192))
