# Mask R-CNN, ViT-S/16 (vanilla-KD student, vit_small_patch16_224) + ViTDet's simple feature pyramid, LSJ at 1024,
# ViTDet's shortest published schedule: 100 epochs (184,375 iterations of 64 images) on COCO 2017.
# No paper number: the VanillaKD paper's Table 11 detects with ResNet-50 and ConvNeXtV2-T only.
# Settings: ViTDet's Mask R-CNN recipe (transfer/vitdet.py; _base_/schedule_vitdet_lsj.py) with drop path 0.1,
# window 14, global blocks 2/5/8/11, 4 images/GPU x 16 GPUs. Deliberate deviations from ViTDet (which publishes
# ViT-B/L/H configs only): its ViT-B settings for this ViT-S; no relative position biases; the student's own
# normalisation (mean = std = 0.5). AMP (AmpOptimWrapper) needs a GPU; for a CPU dry run pass --no-amp.
_base_ = [
    './_base_/vitdet_runtime.py',
    './_base_/mask-rcnn_vit_simple-fpn.py',
    './_base_/coco_instance_lsj.py',
    './_base_/schedule_vitdet_lsj.py',
]

model = dict(backbone=dict(model='vit_small_patch16_224'), neck=dict(in_channels=384))
