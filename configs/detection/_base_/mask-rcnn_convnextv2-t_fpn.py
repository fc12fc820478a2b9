# Mask R-CNN with a ConvNeXtV2-T backbone (mmpretrain's ConvNeXt with GRN and no layer scale, the layout that
# transfer/convert.py writes for timm's convnextv2_tiny) and FPN on its four stages.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.ConvNeXt',
        arch='tiny',
        use_grn=True,
        layer_scale_init_value=0.,
        drop_path_rate=0.4,
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        # tools/transfer.py sets this to Pretrained(checkpoint=<converted student>, prefix='backbone.')
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]))
