# Mask R-CNN, ConvNeXtV2-T-FPN (vanilla-KD student backbone), 1x schedule, COCO 2017.
# Paper, Table 11: 45.7 box AP / 42.0 mask AP on val2017 (no mmdet zoo number).
# Paper settings: mmpretrain ConvNeXt tiny with GRN, no layer scale, drop-path 0.4; 2 images/GPU x 8 GPUs;
# AdamW lr 1e-4 wd 0.05, layer-wise lr decay 0.95 over 6 layers; 1000-iter warm-up; AMP; DETR-style
# multi-scale + crop augmentation; 12 epochs steps [8, 11]. Deliberate deviations: none. AMP (AmpOptimWrapper)
# needs a GPU; for a CPU dry run pass tools/transfer.py --no-amp.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/mask-rcnn_convnextv2-t_fpn.py',
    './_base_/coco_instance_ms-crop.py',
    './_base_/schedule_adamw_1x.py',
]

train_dataloader = dict(batch_size=2, num_workers=2)
