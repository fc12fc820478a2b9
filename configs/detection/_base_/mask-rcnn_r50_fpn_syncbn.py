# Mask R-CNN R50-FPN (mmdet's packaged model base) with the paper's backbone settings: SyncBN with trainable
# affine parameters and running statistics updated during fine-tuning (norm_eval=False), stem + stage 1 frozen.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

model = dict(
    backbone=dict(
        frozen_stages=1,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        # tools/transfer.py sets this to Pretrained(checkpoint=<converted student>, prefix='backbone.')
        init_cfg=None))
