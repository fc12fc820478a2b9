# Mask R-CNN with a distilled timm ViT through ViTDet's simple feature pyramid (Li et al., ECCV 2022; mmdet's
# projects/ViTDet, which the mmdet package does not install; transfer/vitdet.py registers the pieces, each config names it in custom_imports):
# TimmViTDet backbone (the student's blocks, windowed attention with window 14 and global blocks 2/5/8/11,
# position embeddings resampled to each input, drop path 0.1), SimpleFeaturePyramid (strides 4-32 from the
# stride-16 map, LayerNorm), a 2-conv RPN head, a 4conv1fc box head and a mask head with LayerNorm: ViTDet's
# Mask R-CNN. The width below is ViT-S's (384); the ViT-T configs set 192.
# Deliberate deviations from ViTDet: no relative position biases (the distilled students have none); the
# student's own normalisation (timm's vit_*_patch16_224: mean = std = 0.5), not MAE's ImageNet statistics.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

norm_cfg = dict(type='mmpretrain.LN2d', eps=1e-6, requires_grad=True)
model = dict(
    data_preprocessor=dict(
        mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], bgr_to_rgb=True, pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size=(1024, 1024), pad_mask=True)]),
    backbone=dict(
        _delete_=True,
        type='TimmViTDet',
        model='vit_small_patch16_224',
        window_size=14,
        global_blocks=(2, 5, 8, 11),
        drop_path_rate=0.1,
        # tools/transfer.py sets this to Pretrained(checkpoint=<converted student>, prefix='backbone.')
        init_cfg=None),
    neck=dict(_delete_=True, type='SimpleFeaturePyramid', in_channels=384, out_channels=256, num_outs=5,
              norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
