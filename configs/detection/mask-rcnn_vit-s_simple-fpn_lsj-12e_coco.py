# Mask R-CNN, ViT-S/16 (vanilla-KD student, vit_small_patch16_224) + ViTDet's simple feature pyramid, LSJ at 1024,
# a 1x-like schedule: 12 epochs (22,125 iterations of 64 images), x0.1 steps after epochs 8 and 11 on COCO 2017.
# No paper number: the VanillaKD paper's Table 11 detects with ResNet-50 and ConvNeXtV2-T only.
# Settings: ViTDet's Mask R-CNN recipe (transfer/vitdet.py; _base_/schedule_vitdet_lsj.py) with drop path 0.1,
# window 14, global blocks 2/5/8/11, 4 images/GPU x 16 GPUs. Deliberate deviations from ViTDet (which publishes
# ViT-B/L/H configs only): its ViT-B settings for this ViT-S; no relative position biases; the student's own
# normalisation (mean = std = 0.5). AMP (AmpOptimWrapper) needs a GPU; for a CPU dry run pass --no-amp.
_base_ = './mask-rcnn_vit-s_simple-fpn_lsj-100e_coco.py'

# 12 epochs = 22125 iterations x 64 images / 118k images; steps at 8 and 11 epochs (14750, 20281)
max_iters = 22125
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[14750, 20281], gamma=0.1),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
