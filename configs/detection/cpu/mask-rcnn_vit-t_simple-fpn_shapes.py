# CPU-sized Mask R-CNN, ViT-T/16 + ViTDet's simple feature pyramid, for the built-in shapes set (the tests and
# make rehearse's cpu profile). The paper-scale configs are ../mask-rcnn_vit-t_simple-fpn_lsj-*_coco.py.
# Deliberate deviations from them, to train in minutes on 2 cores: the R18 CPU config's small heads (64-channel
# pyramid, RPN and RoI path), 128 px images without LSJ, windows of 4 patches (the 8x8 grid of a 128 px image;
# 14 would pad it to one window), fp32, 8 epochs. ViTDet's optimisation otherwise: AdamW, layer-wise lr decay
# 0.7, no weight decay on norms and position embeddings.
_base_ = ['./mask-rcnn_r18_fpn_shapes.py']

custom_imports = dict(imports=['mmpretrain.models', 'transfer.vitdet', 'transfer.hooks', 'transfer.atomic_backend'],
                      allow_failed_imports=False)
norm_cfg = dict(type='mmpretrain.LN2d', eps=1e-6, requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(
        _delete_=True, type='TimmViTDet', model='vit_tiny_patch16_224', window_size=4, global_blocks=(2, 5, 8, 11),
        drop_path_rate=0.1,
        # tools/transfer.py points this at the converted student
        init_cfg=None),
    neck=dict(_delete_=True, type='SimpleFeaturePyramid', in_channels=192, out_channels=64, num_outs=5,
              norm_cfg=norm_cfg))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7, norm_decay_mult=0.0, custom_keys={'pos_embed': dict(decay_mult=0.0)}),
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.1),
    clip_grad=dict(max_norm=10, norm_type=2))
