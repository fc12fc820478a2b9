# The runtime of the ViTDet configs: the project's runtime, plus transfer.vitdet in custom_imports (it registers
# TimmViTDet, SimpleFeaturePyramid and the layer-decay constructor) and iteration-based logging and checkpoints
# every 5000 iterations, as mmdet's projects/ViTDet configs have them.
_base_ = './default_runtime.py'

custom_imports = dict(imports=['mmpretrain.models', 'transfer.vitdet', 'transfer.hooks', 'transfer.atomic_backend'],
                      allow_failed_imports=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, save_last=True, max_keep_ckpts=5))
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=False)
