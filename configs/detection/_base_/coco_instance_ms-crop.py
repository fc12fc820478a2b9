# COCO 2017 instance segmentation with the DETR / Sparse R-CNN style multi-scale + crop training augmentation
# that the ConvNeXt(V2) detection recipes use (as in mmdet's convnext/*_amp-ms-crop-3x_coco.py): flip, then
# either a random short side in 480..800 (long side <= 1333), or a 400/500/600 resize, a random 384..600 crop
# and a 480..800 resize. Testing is unchanged (1333x800).
_base_ = './coco_instance.py'

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(type='RandomChoiceResize', keep_ratio=True,
                     scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]),
            ],
            [
                dict(type='RandomChoiceResize', keep_ratio=True, scales=[(400, 1333), (500, 1333), (600, 1333)]),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', keep_ratio=True,
                     scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
