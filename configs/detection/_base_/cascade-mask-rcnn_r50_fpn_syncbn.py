# Cascade Mask R-CNN R50-FPN (mmdet's packaged model base: 3 stages of Shared2FCBBoxHead, SmoothL1) with the
# paper's ResNet-50 backbone settings: SyncBN, norm_eval=False, stem + stage 1 frozen.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'

model = dict(
    backbone=dict(
        frozen_stages=1,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        # tools/transfer.py sets this to Pretrained(checkpoint=<converted student>, prefix='backbone.')
        init_cfg=None))
