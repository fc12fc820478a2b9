# ViTDet's optimisation (mmdet's projects/ViTDet, detectron2's ViTDet configs): AdamW lr 1e-4 (betas 0.9/0.999),
# weight decay 0.1 (none on norms and position embeddings), layer-wise lr decay 0.7 over the 12 blocks
# (lr scale 0.7 ** (13 - layer): embeddings layer 0, block i layer i + 1, neck and heads full lr), AMP, 250
# iterations of linear warm-up, iteration-based with x0.1 steps; total batch 64. The schedule length is set by
# the config (max_iters, milestones): ViTDet's 100 epochs, or 12 epochs like mmdet's 1x.
# AmpOptimWrapper needs a GPU: for a CPU dry run pass tools/transfer.py --no-amp.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='ViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.7, norm_decay_mult=0.0, custom_keys={'pos_embed': dict(decay_mult=0.0)}),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=184375, val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', begin=0, end=184375, by_epoch=False, milestones=[163889, 177546], gamma=0.1),
]
# lr is for ViTDet's total batch of 64; enable to scale it linearly for another total batch.
auto_scale_lr = dict(enable=False, base_batch_size=64)
