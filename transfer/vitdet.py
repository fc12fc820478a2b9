"""A distilled timm ViT as a detector backbone, the ViTDet way (Li et al., "Exploring Plain Vision Transformer
Backbones for Object Detection", ECCV 2022, arXiv 2203.16527; mmdet's projects/ViTDet, which the mmdet package
does not install).

- ``TimmViTDet`` (backbone): the student's own timm modules (patch embedding, position embeddings, blocks), so
  its state dict keys are timm's (``transfer/convert.py`` writes ``backbone.<timm key>``). Position embeddings are
  resampled to each input's patch grid by timm's ``resample_abs_pos_embed`` (also inside an exported graph);
  most blocks attend within non-overlapping windows, a few globally (ViTDet: window 14, global blocks 2, 5, 8,
  11 of 12); drop path is timm's. The class token is dropped, as ViTDet does (``use_cls_token=True`` keeps it,
  for all-global attention only: then the output equals timm's ``forward_intermediates``, what ``--verify``
  checks). Output: the last block's map at stride 16, NCHW, without the final norm.
- ``SimpleFeaturePyramid`` (neck): ViTDet's simple feature pyramid: strides 4, 8, 16, 32 from the stride-16 map
  (two deconvolutions, one, identity, max-pool), each through a 1x1 and a 3x3 conv with LayerNorm, plus
  max-pooled P6 for the RPN, as mmdet's FPN gives it.
- ``ViTLayerDecayOptimWrapperConstructor``: mmpretrain's layer-wise lr decay constructor for a whole detector,
  depths from the backbone's ``get_layer_depth`` (the neck and heads at full lr), as ViTDet decays its ViT.

Deliberate deviation from ViTDet: no relative position biases in attention (the distilled timm ViTs have none;
ViTDet adds them zero-initialised to MAE backbones).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

# ViTDet's ViT-B settings (its configs give none for ViT-S/T; they share ViT-B's depth of 12)
VITDET_WINDOW = 14
VITDET_GLOBAL_BLOCKS = (2, 5, 8, 11)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window * window, C), zero-padded to whole windows (ViTDet pads after norm1)."""
    B, H, W, C = x.shape
    pad_h, pad_w = (window - H % window) % window, (window - W % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C), (Hp, Wp)


def window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int],
                       batch: int) -> torch.Tensor:
    """The inverse of ``window_partition``: (B * windows, window * window, C) -> (B, H, W, C)."""
    (Hp, Wp), (H, W) = padded, size
    x = x.view(batch, Hp // window, Wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, Hp, Wp, -1)[:, :H, :W]


def windowed_block(block: nn.Module, x: torch.Tensor, window: int) -> torch.Tensor:
    """A timm ViT ``Block`` with its attention restricted to windows (ViTDet's window block): the block's own
    modules, called in the order of its ``forward``; only the attention input and output are re-tiled."""
    B, H, W, C = x.shape
    h, padded = window_partition(block.norm1(x), window)
    h = window_unpartition(block.attn(h), window, padded, (H, W), B)
    x = x + block.drop_path1(block.ls1(h))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


@MODELS.register_module()
class TimmViTDet(BaseModule):
    """A timm plain ViT (``vit_*_patch16_*``) as a stride-16 detection backbone; see the module docstring."""

    def __init__(self, model: str = "vit_small_patch16_224", window_size: int = VITDET_WINDOW,
                 global_blocks: Sequence[int] = VITDET_GLOBAL_BLOCKS, drop_path_rate: float = 0.1,
                 use_cls_token: bool = False, init_cfg: dict | None = None):
        super().__init__(init_cfg)
        import timm
        from timm.models.vision_transformer import VisionTransformer
        vit = timm.create_model(model, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                                dynamic_img_size=True)
        if not isinstance(vit, VisionTransformer) or vit.num_reg_tokens or vit.no_embed_class or not vit.has_class_token:
            raise ValueError(f"TimmViTDet takes timm's plain ViTs with a class token (vit_*_patch16_*), not {model}")
        depth = len(vit.blocks)
        global_blocks = tuple(int(i) for i in global_blocks)
        if any(not 0 <= i < depth for i in global_blocks):
            raise ValueError(f"global_blocks {global_blocks} outside the {depth} blocks of {model}")
        if use_cls_token and len(global_blocks) < depth:
            raise ValueError("use_cls_token=True needs global attention in every block (global_blocks = all)")
        self.model_name = model
        self.window_size = int(window_size)
        self.global_blocks = global_blocks
        self.use_cls_token = use_cls_token
        self.embed_dim = vit.embed_dim
        self.pretrain_grid = tuple(vit.patch_embed.grid_size)
        self.num_prefix_tokens = vit.num_prefix_tokens
        # the student's modules under timm's names, so its state dict loads as it is
        self.patch_embed, self.cls_token, self.pos_embed = vit.patch_embed, vit.cls_token, vit.pos_embed
        self.pos_drop, self.norm_pre, self.blocks = vit.pos_drop, vit.norm_pre, vit.blocks
        if not use_cls_token:  # kept in the state dict (the student's file has it), never used or trained
            self.cls_token.requires_grad_(False)

    def init_weights(self) -> None:
        # timm initialised the modules; a Pretrained init_cfg (the converted student) is applied by mmengine
        if self.init_cfg is not None:
            super().init_weights()

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embeddings (prefix tokens first) resampled to a height x width patch grid, by timm."""
        from timm.layers import resample_abs_pos_embed
        return resample_abs_pos_embed(self.pos_embed, (height, width), old_size=self.pretrain_grid,
                                      num_prefix_tokens=self.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = self.patch_embed(x)  # (B, H, W, C): dynamic_img_size
        B, H, W, C = x.shape
        pos = self.position_embedding(H, W)
        if self.use_cls_token:  # timm's VisionTransformer._pos_embed, then every block global
            x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], dim=1) + pos
            x = self.norm_pre(self.pos_drop(x))
            for blk in self.blocks:
                x = blk(x)
            x = x[:, self.num_prefix_tokens:].reshape(B, H, W, C)
        else:
            x = x + pos[:, self.num_prefix_tokens:].reshape(1, H, W, C)
            x = self.norm_pre(self.pos_drop(x))
            for i, blk in enumerate(self.blocks):
                if i in self.global_blocks:
                    x = blk(x.reshape(B, H * W, C)).reshape(B, H, W, C)
                else:
                    x = windowed_block(blk, x, self.window_size)
        return (x.permute(0, 3, 1, 2).contiguous(),)

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """(layer, number of layers) for layer-wise lr decay, mmpretrain's VisionTransformer convention:
        embeddings 0, block i -> i + 1, anything else (outside the backbone too) the top."""
        num_layers = len(self.blocks) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
            return 0, num_layers
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1, num_layers
        return num_layers - 1, num_layers


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple feature pyramid (its Fig. 2c): strides 4, 8, 16, 32 from one stride-16 map of
    ``in_channels``, each to ``out_channels`` by a 1x1 and a 3x3 conv with ``norm_cfg``; ``num_outs`` > 4 adds
    max-pooled levels on top (P6 for the RPN)."""

    def __init__(self, in_channels: int, out_channels: int = 256, num_outs: int = 5,
                 norm_cfg: dict | None = None, init_cfg: dict | None = None):
        super().__init__(init_cfg)
        from mmcv.cnn import ConvModule, build_norm_layer
        norm_cfg = norm_cfg or dict(type="mmpretrain.LN2d", eps=1e-6)
        c = in_channels
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2), build_norm_layer(norm_cfg, c // 2)[1], nn.GELU(),
                          nn.ConvTranspose2d(c // 2, c // 4, 2, 2)),
            nn.ConvTranspose2d(c, c // 2, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2, 2),
        ])
        widths = (c // 4, c // 2, c, c)
        self.lateral_convs = nn.ModuleList(
            ConvModule(w, out_channels, 1, bias=False, norm_cfg=norm_cfg, act_cfg=None) for w in widths)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, bias=False, norm_cfg=norm_cfg, act_cfg=None)
            for _ in widths)
        self.num_outs = num_outs

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        x = inputs[-1]
        outs = [conv(lat(scale(x))) for scale, lat, conv in zip(self.scales, self.lateral_convs, self.fpn_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)


def _mmpretrain_layer_decay():
    from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
    return LearningRateDecayOptimWrapperConstructor


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimWrapperConstructor(_mmpretrain_layer_decay()):
    """mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` (paramwise ``layer_decay_rate``,
    ``norm_decay_mult``, ``custom_keys``...) applied to a detector: it asks the model itself for
    ``get_layer_depth``, which mmdet detectors lack, so the depth comes from ``model.backbone`` here."""

    def add_params(self, params: list, module: nn.Module, prefix: str = "", get_layer_depth=None,
                   **kwargs) -> None:
        if get_layer_depth is None and prefix == "" and hasattr(module, "backbone"):
            backbone = module.backbone

            def get_layer_depth(name: str) -> tuple[int, int]:
                return backbone.get_layer_depth(name, prefix="backbone.")
        super().add_params(params, module, prefix, get_layer_depth, **kwargs)


@torch.no_grad()
def windowed_reference(backbone: TimmViTDet, x: torch.Tensor) -> torch.Tensor:
    """``backbone``'s windowed forward written out as loops over windows (slices of an explicitly zero-padded
    map, one timm attention call per window): the reference ``tools/convert.py --verify`` checks the batched
    partition against, since timm has no windowed ViT to compare with."""
    h = backbone.patch_embed(x)
    B, H, W, C = h.shape
    ws = backbone.window_size
    pos = backbone.position_embedding(H, W)
    h = backbone.norm_pre(backbone.pos_drop(h + pos[:, backbone.num_prefix_tokens:].reshape(1, H, W, C)))
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    for i, blk in enumerate(backbone.blocks):
        if i in backbone.global_blocks:
            h = blk(h.reshape(B, H * W, C)).reshape(B, H, W, C)
            continue
        padded = h.new_zeros(B, Hp, Wp, C)
        padded[:, :H, :W] = blk.norm1(h)
        attn = torch.empty_like(padded)
        for r in range(0, Hp, ws):
            for c in range(0, Wp, ws):
                win = padded[:, r:r + ws, c:c + ws].reshape(B, ws * ws, C)
                attn[:, r:r + ws, c:c + ws] = blk.attn(win).reshape(B, ws, ws, C)
        h = h + blk.ls1(attn[:, :H, :W])
        h = h + blk.ls2(blk.mlp(blk.norm2(h)))
    return h.permute(0, 3, 1, 2)
