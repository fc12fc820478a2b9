# The paper's ResNet-50 detection schedule, 1x: SGD lr 0.04 (0.02 x 32/16) for 4 images/GPU x 8 GPUs, momentum
# 0.9, wd 1e-4, 500-iteration linear warm-up from 0.001 x lr, 12 epochs with x0.1 steps after epochs 8 and 11.
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.04, momentum=0.9, weight_decay=1e-4))
# lr 0.04 is for the paper's total batch of 32; set enable=True (or --cfg-options auto_scale_lr.enable=True)
# to scale it linearly when training with another number of GPUs or images per GPU.
auto_scale_lr = dict(enable=False, base_batch_size=32)
