# The paper's ResNet-50 detection schedule, 2x: as schedule_sgd_1x.py, 24 epochs with steps after 16 and 22.
_base_ = './schedule_sgd_1x.py'

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[16, 22], gamma=0.1),
]
