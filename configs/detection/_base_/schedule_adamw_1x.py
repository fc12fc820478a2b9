# The paper's ConvNeXtV2-T detection schedule, 1x: AdamW (betas 0.9/0.999) lr 1e-4, wd 0.05, layer-wise lr
# decay 0.95 over 6 layers (the Cascade configs override lr 2e-4 and decay 0.7), AMP, 1000-iteration linear
# warm-up from 0.001 x lr, 12 epochs with x0.1 steps after epochs 8 and 11; 2 images/GPU x 8 GPUs.
#
# LearningRateDecayOptimizerConstructor (mmdet.engine.optimizers) understands mmpretrain's ConvNeXt parameter
# names (backbone.downsample_layers.<i>.*, backbone.stages.<i>.<block>.*): downsample 0 -> layer 0, stage 0 -> 1,
# stage 1 (+ its downsample) -> 2, stage 2 (+ downsample) -> 3 + block // 3, stage 3 (+ downsample) -> 6, and
# everything else (the backbone's out norms, neck, heads) -> 7 with the full lr; lr scale = decay ** (7 - layer).
# 1-D parameters and biases (norms, GRN gamma/beta) get no weight decay.
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
# AmpOptimWrapper needs a GPU (mmengine asserts CUDA/NPU/MLU/MUSA): for a CPU dry run pass tools/transfer.py
# --no-amp (fp32 OptimWrapper; --cfg-options cannot drop loss_scale, which OptimWrapper refuses)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    constructor='LearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
# lr is for the paper's total batch of 16; enable to scale it linearly for another total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
