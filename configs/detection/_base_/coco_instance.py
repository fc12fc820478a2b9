# COCO 2017 instance segmentation for the paper configs: mmdet's packaged base (1333x800 keep-ratio resize and
# horizontal flip for training, 1333x800 for testing), with data_root and the box+mask CocoMetric stated here.
# The train batch size per GPU is set by each config (4 for ResNet-50, 2 for ConvNeXtV2-T).
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

data_root = 'data/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric', ann_file=data_root + 'annotations/instances_val2017.json', metric=['bbox', 'segm'],
    format_only=False)
test_evaluator = val_evaluator
