# Mask R-CNN, ResNet-50-FPN (vanilla-KD student backbone), 1x schedule, COCO 2017.
# Paper, Table 11: 41.8 box AP / 37.7 mask AP on val2017 (mmdet zoo, ImageNet backbone: 38.2 / 34.7).
# Paper settings (mmdet 2.x, expressed in mmdet 3.x): SyncBN (requires_grad, norm_eval=False), frozen_stages=1,
# 4 images/GPU x 8 GPUs, SGD lr 0.04 momentum 0.9 wd 1e-4, 500-iter linear warm-up, 12 epochs steps [8, 11],
# 1333x800 resize + flip. Deliberate deviations: none (mmdet 3.x's own Mask R-CNN heads and test settings).
_base_ = [
    './_base_/default_runtime.py',
    './_base_/mask-rcnn_r50_fpn_syncbn.py',
    './_base_/coco_instance.py',
    './_base_/schedule_sgd_1x.py',
]

train_dataloader = dict(batch_size=4, num_workers=4)
