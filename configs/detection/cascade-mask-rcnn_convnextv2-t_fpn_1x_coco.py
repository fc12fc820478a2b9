# Cascade Mask R-CNN, ConvNeXtV2-T-FPN (vanilla-KD student backbone), 1x schedule, COCO 2017.
# Paper, Table 11: 50.6 box AP / 44.3 mask AP on val2017 (no mmdet zoo number).
# Paper settings: ConvNeXt tiny with GRN, no layer scale, drop-path 0.4; 4conv1fc box heads with SyncBN and
# GIoU loss (weight 10); 2 images/GPU x 8 GPUs; AdamW lr 2e-4 wd 0.05, layer-wise lr decay 0.7 over 6 layers;
# 1000-iter warm-up; AMP; DETR-style multi-scale + crop; 12 epochs steps [8, 11]. Deliberate deviations: none.
# AMP needs a GPU.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/cascade-mask-rcnn_convnextv2-t_fpn_4conv1fc-giou.py',
    './_base_/coco_instance_ms-crop.py',
    './_base_/schedule_adamw_1x.py',
]

train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7))
