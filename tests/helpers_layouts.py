"""Weight files in the layouts users hold, made from timm models with random weights (test fixtures only).

The reverse mappings below exist to produce those layouts; the code under test maps them back with timm's own
filters (common.weights), never with these.
"""
import argparse
import re

import torch


def official_convnextv2(sd: dict) -> dict:
    """timm's ConvNeXt-V2 state dict -> the official release's layout ({'model': ...}; downsample_layers,
    stages.i.j.{dwconv, pwconv1/2 as Linear, grn.gamma/beta of shape 1x1x1xC}, norm, head)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace(".conv_dw.", ".dwconv.")
        if ".mlp.fc" in k:
            k = k.replace(".mlp.fc", ".pwconv")
            v = v.flatten(1) if v.dim() == 4 else v  # the official blocks use Linear (timm's atto..nano: 1x1 conv)
        if ".mlp.grn." in k:
            k = k.replace(".mlp.grn.weight", ".grn.gamma").replace(".mlp.grn.bias", ".grn.beta")
            v = v.reshape(1, 1, 1, -1)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        out[k] = v.clone()
    assert not any(k.startswith(("stem.", "head.norm", "head.fc")) for k in out)
    return {"model": out}


def original_beit(model: torch.nn.Module) -> dict:
    """A timm BEiT -> the original BEiT / BEiT v2 release: {'model': ...} with every block's
    attn.relative_position_index buffer (timm keeps it out of its state dict)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for i, blk in enumerate(model.blocks):
        assert f"blocks.{i}.attn.relative_position_index" not in sd
        sd[f"blocks.{i}.attn.relative_position_index"] = blk.attn.relative_position_index.clone()
    return {"model": sd}


def timm06_saver(name: str, sd: dict, ema_sd: dict, epoch: int = 299) -> dict:
    """What timm 0.6.x's CheckpointSaver writes (the official repository's training files)."""
    return {"epoch": epoch, "arch": name, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "version": 2, "args": argparse.Namespace(model=name, lr=5e-3, epochs=300), "state_dict_ema": ema_sd,
            "metric": 83.078}


def deit_release(sd: dict) -> dict:
    """DeiT's repository saves {'model': ..., 'optimizer', 'lr_scheduler', 'epoch', 'args'} around timm's keys."""
    return {"model": sd, "optimizer": {}, "lr_scheduler": {}, "epoch": 299,
            "args": argparse.Namespace(model="deit_tiny_patch16_224")}


def openmmlab_classifier(sd: dict) -> dict:
    """An mmpretrain-style file of a timm ResNet: backbone.* (mmdet/mmpretrain ResNet keys are timm's), head.fc.*"""
    body = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    body.update({"head.fc.weight": sd["fc.weight"], "head.fc.bias": sd["fc.bias"]})
    return {"meta": {"mmpretrain_version": "1.2.0"}, "state_dict": body}
