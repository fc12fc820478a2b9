# Cascade Mask R-CNN with a ConvNeXtV2-T backbone and the ConvNeXt recipe's box heads: per stage a 4conv1fc
# ConvFCBBoxHead with SyncBN, decoded-box regression and GIoU loss (weight 10), as in mmdet's
# convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'



def _head(stds):  # noqa: E302  (mmengine executes the config file; helpers are dropped from the result)
    return dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
        fc_out_channels=1024, roi_feat_size=7, num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
        reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='SyncBN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


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
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        _head([0.1, 0.1, 0.2, 0.2]),
        _head([0.05, 0.05, 0.1, 0.1]),
        _head([0.033, 0.033, 0.067, 0.067]),
    ]))
