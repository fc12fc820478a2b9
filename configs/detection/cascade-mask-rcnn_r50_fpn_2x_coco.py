# Cascade Mask R-CNN, ResNet-50-FPN (vanilla-KD student backbone), 2x schedule, COCO 2017.
# Paper, Table 11: no number for this pair (the mmdet zoo lists Cascade Mask R-CNN R50 1x only: 41.2 / 35.9).
# Settings: the paper's ResNet-50 detection settings (SyncBN, norm_eval=False, frozen_stages=1, 4 x 8 images,
# SGD lr 0.04, 500-iter warm-up, 1333x800 + flip), 24 epochs steps [16, 22], on mmdet's standard Cascade Mask
# R-CNN heads. Deliberate deviations: none beyond the missing paper number.
_base_ = [
    './_base_/default_runtime.py',
    './_base_/cascade-mask-rcnn_r50_fpn_syncbn.py',
    './_base_/coco_instance.py',
    './_base_/schedule_sgd_2x.py',
]

train_dataloader = dict(batch_size=4, num_workers=4)
