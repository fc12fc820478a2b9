# Mask R-CNN, ResNet-50-FPN (vanilla-KD student backbone), 2x schedule, COCO 2017.
# Paper, Table 11: 42.1 box AP / 38.0 mask AP on val2017 (mmdet zoo, ImageNet backbone: 39.2 / 35.4).
# Paper settings: as the 1x config (SyncBN, norm_eval=False, frozen_stages=1, 4 x 8 images, SGD lr 0.04,
# 500-iter warm-up, 1333x800 + flip), 24 epochs steps [16, 22]. Deliberate deviations: none.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/mask-rcnn_r50_fpn_syncbn.py',
    './_base_/coco_instance.py',
    './_base_/schedule_sgd_2x.py',
]

train_dataloader = dict(batch_size=4, num_workers=4)
