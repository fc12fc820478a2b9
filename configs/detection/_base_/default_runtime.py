# mmdet's runtime plus what keeps a work dir usable by mmdet's own tools (tools/test.py, tools/train.py --resume,
# DetInferencer, mim): custom_imports registers vanillakd's hooks and file backend (mmdet's convention, so no
# wrapper is needed to reopen a config), SafeCheckpointHook keeps every checkpoint loadable with
# torch.load(weights_only=True), and the atomic_local backend writes checkpoints by rename (a kill never leaves
# half a file). mmpretrain.models provides the ConvNeXt(-V2) backbone.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['mmpretrain.models', 'transfer.hooks', 'transfer.atomic_backend'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='SafeCheckpointHook')]
default_hooks = dict(checkpoint=dict(backend_args=dict(backend='atomic_local')))
