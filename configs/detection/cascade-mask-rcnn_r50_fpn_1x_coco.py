# Cascade Mask R-CNN, ResNet-50-FPN (vanilla-KD student backbone), 1x schedule, COCO 2017.
# Paper, Table 11: no number for this pair (mmdet zoo, ImageNet backbone: 41.2 box AP / 35.9 mask AP).
# Settings: the paper's ResNet-50 detection settings (SyncBN, norm_eval=False, frozen_stages=1, 4 x 8 images,
# SGD lr 0.04 momentum 0.9 wd 1e-4, 500-iter warm-up, 12 epochs steps [8, 11], 1333x800 + flip) on mmdet's
# standard Cascade Mask R-CNN heads (3 x Shared2FCBBoxHead, SmoothL1). Deliberate deviation: the zoo number
# above used frozen BN (norm_eval=True) and batch 16 at lr 0.02, so it is a reference, not a like-for-like.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/cascade-mask-rcnn_r50_fpn_syncbn.py',
    './_base_/coco_instance.py',
    './_base_/schedule_sgd_1x.py',
]

train_dataloader = dict(batch_size=4, num_workers=4)
