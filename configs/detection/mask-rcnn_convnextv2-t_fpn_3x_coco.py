# Mask R-CNN, ConvNeXtV2-T-FPN (vanilla-KD student backbone), 3x schedule, COCO 2017.
# Paper, Table 11: 47.9 box AP / 43.3 mask AP on val2017 (mmdet zoo, ImageNet ConvNeXt-V1-T: 46.2 / 41.7).
# Paper settings: as the 1x config (ConvNeXt tiny with GRN, no layer scale, drop-path 0.4; 2 x 8 images;
# AdamW lr 1e-4 wd 0.05, layer decay 0.95 / 6 layers; 1000-iter warm-up; AMP; multi-scale + crop), 36 epochs
# steps [27, 33]. Deliberate deviations: none. AMP needs a GPU.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/mask-rcnn_convnextv2-t_fpn.py',
    './_base_/coco_instance_ms-crop.py',
    './_base_/schedule_adamw_3x.py',
]

train_dataloader = dict(batch_size=2, num_workers=2)
