# CPU-sized Cascade Mask R-CNN R18-FPN for the built-in shapes set. It inherits mask-rcnn_r18_fpn_shapes.py
# (backbone, 64-channel FPN/RPN, small anchors, data, 128 px images, optimizer, schedule, runtime) and replaces
# the RoI head by three slim cascade stages.
# Deliberate deviations from the paper's Cascade configs, to train in minutes on 2 cores: Shared2FCBBoxHead
# stages with 256-wide FCs on the 64-channel RoI path (class-agnostic regression, SmoothL1 as in mmdet's Cascade
# R-CNN, IoU thresholds 0.5/0.6/0.7), a 2-conv 64-channel mask head per stage, plain BN with frozen statistics
# (batch 4 on one process), SGD and a short schedule.
# To train at about the Mask R-CNN CPU config's speed: 64 sampled RoIs per stage (192 over the 3 stages, vs
# 128 for Mask R-CNN) and RoIAlign with one sampling point per bin (sampling_ratio=1; the base uses 2). On CPU,
# mmcv's RoIAlign backward dominates the RoI heads, and a cascade runs it (box and mask) once per stage.
# Measured on 2 busy cores, 1 thread, batch 4 of 128 px shapes, s/iter relative to the Mask R-CNN CPU config:
# this config 1.1-1.2x; with the base's sampling_ratio=2 1.6-1.8x; with that and 128 RoIs per stage 1.8-2.0x.
_base_ = './mask-rcnn_r18_fpn_shapes.py'

num_classes = 12  # as the base (tests/test_detection_configs.py checks)
channels = 64


def _bbox_head(stds):  # noqa: E302  (mmengine drops functions from the resolved config)
    return dict(
        type='Shared2FCBBoxHead', in_channels=channels, fc_out_channels=256, roi_feat_size=7,
        num_classes=num_classes,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
        reg_class_agnostic=True,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


def _rcnn_train(iou):  # noqa: E302
    return dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                      match_low_quality=False, ignore_iof_thr=-1),
        sampler=dict(type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
        mask_size=28, pos_weight=-1, debug=False)


model = dict(
    type='CascadeRCNN',
    roi_head=dict(
        _delete_=True,
        type='CascadeRoIHead',
        num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=1),
            out_channels=channels, featmap_strides=[4, 8, 16, 32]),
        bbox_head=[
            _bbox_head([0.1, 0.1, 0.2, 0.2]),
            _bbox_head([0.05, 0.05, 0.1, 0.1]),
            _bbox_head([0.033, 0.033, 0.067, 0.067]),
        ],
        mask_roi_extractor=dict(
            type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=1),
            out_channels=channels, featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead', num_convs=2, in_channels=channels, conv_out_channels=channels,
            num_classes=num_classes, loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    # a list (one per stage) replaces the base's single rcnn dict; rpn, rpn_proposal and test_cfg are the base's
    train_cfg=dict(rcnn=[_rcnn_train(0.5), _rcnn_train(0.6), _rcnn_train(0.7)]))
