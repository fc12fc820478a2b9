# Cascade Mask R-CNN, ConvNeXtV2-T-FPN (vanilla-KD student backbone), 3x schedule, COCO 2017.
# Paper, Table 11: 52.1 box AP / 45.4 mask AP on val2017 (mmdet zoo, ImageNet ConvNeXt-V1-T: 50.3 / 43.6).
# Paper settings: as the 1x config (GRN, no layer scale, drop-path 0.4; 4conv1fc SyncBN GIoU heads; 2 x 8
# images; AdamW lr 2e-4 wd 0.05, layer decay 0.7 / 6 layers; 1000-iter warm-up; AMP; multi-scale + crop),
# 36 epochs steps [27, 33]. Deliberate deviations: none. AMP needs a GPU.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/cascade-mask-rcnn_convnextv2-t_fpn_4conv1fc-giou.py',
    './_base_/coco_instance_ms-crop.py',
    './_base_/schedule_adamw_3x.py',
]

train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7))
