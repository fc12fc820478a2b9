"""timm and OpenMMLab checkpoints -> mmdet/mmpretrain backbone checkpoints, with no silent partial loads.

Inputs are timm state dicts in any common wrapping, or OpenMMLab files (an mmpretrain classifier's
``backbone.*`` + ``head.*``, an mmdet/mmpretrain backbone's ``backbone.*``, with ``meta``). OpenMMLab weights are
first renamed to timm's keys, so every form goes through the same inference, checks and timm verification;
an mmdet-layout backbone comes out with the keys and tensors it went in with.

The output is ``{'state_dict': {'backbone.<key>': tensor}}``, loadable by
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')`` or as a detector's ``load_from``.
Each mapping is checked against the target architecture's own parameter names and shapes before writing,
because mmengine's Pretrained init only warns on mismatches (mmengine ``load_state_dict`` with ``strict=False``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from common.io import UserError, atomic_save, key_mismatch
# the general weight reader (with the OpenMMLab -> timm renaming) lives in common/: export and CKA read weights too
from common.openmmlab import read_student
from common.weights import fit_strict, hub_architecture, is_hub_folder, prepare_model


@dataclass(frozen=True)
class Arch:
    """A supported backbone: how to build it in mmdet/mmpretrain and how to rename timm's keys."""

    family: str  # resnet | resnetv1d | convnext | vit
    mm_cfg: dict
    rename: Callable[[str], str | None]


def _resnet_key(k: str) -> str | None:
    return None if k.startswith("fc.") else k


_V1D_STEM = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.", "conv1.4.": "stem.4.",
             "conv1.6.": "stem.6.", "bn1.": "stem.7."}


def _resnetv1d_key(k: str) -> str | None:
    if k.startswith("fc."):
        return None
    for a, b in _V1D_STEM.items():
        if k.startswith(a):
            return b + k[len(a):]
    return k


def _convnext_key(k: str) -> str | None:
    if k.startswith("head.fc.") or k.startswith("head.") and not k.startswith("head.norm."):
        return None
    k = re.sub(r"^stem\.([01])\.", r"downsample_layers.0.\1.", k)
    k = re.sub(r"^stages\.(\d)\.downsample\.([01])\.", r"downsample_layers.\1.\2.", k)
    k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
    k = k.replace(".conv_dw.", ".depthwise_conv.").replace(".mlp.fc1.", ".pointwise_conv1.")
    k = k.replace(".mlp.fc2.", ".pointwise_conv2.").replace(".mlp.grn.weight", ".grn.gamma")
    k = k.replace(".mlp.grn.bias", ".grn.beta").replace(".grn.weight", ".grn.gamma").replace(".grn.bias", ".grn.beta")
    k = re.sub(r"^head\.norm\.", "norm3.", k)
    return k


def _vit_key(k: str) -> str | None:
    # the ViTDet backbone ends at the last block (no final norm, no pooling or head)
    return None if k.startswith(("norm.", "fc_norm.", "head.", "head_drop.")) else k


# mmpretrain's ConvNeXt norms after output stages 0-2: no timm counterpart, carried through under their own name.
_MM_EXTRA = re.compile(r"^norm[0-2]\.")


_RESNET_DEPTH = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
_CONVNEXT_ARCH = {"atto": "atto", "femto": "femto", "pico": "pico", "nano": "nano", "tiny": "tiny",
                  "small": "small", "base": "base", "large": "large", "huge": "huge"}


def get_arch(model: str) -> Arch:
    """The mm-side architecture for a timm model name."""
    if model in _RESNET_DEPTH:
        return Arch("resnet", dict(type="mmdet.ResNet", depth=_RESNET_DEPTH[model], num_stages=4,
                                   out_indices=(0, 1, 2, 3), style="pytorch"), _resnet_key)
    m = re.fullmatch(r"resnet(18|34|50|101|152)d", model)
    if m:
        return Arch("resnetv1d", dict(type="mmdet.ResNetV1d", depth=int(m.group(1)), num_stages=4,
                                      out_indices=(0, 1, 2, 3), style="pytorch"), _resnetv1d_key)
    m = re.fullmatch(r"convnext(v2)?_(\w+?)(\.\w+)?", model)
    if m and m.group(2) in _CONVNEXT_ARCH:
        v2 = bool(m.group(1))
        cfg = dict(type="mmpretrain.ConvNeXt", arch=_CONVNEXT_ARCH[m.group(2)], out_indices=(0, 1, 2, 3),
                   gap_before_final_norm=False, use_grn=v2, layer_scale_init_value=0.0 if v2 else 1e-6)
        return Arch("convnext", cfg, _convnext_key)
    if re.fullmatch(r"vit_(tiny|small|base|large)_patch16_\d+(\.\w+)?", model):
        # transfer/vitdet.py: the student's timm modules in ViTDet's windowed backbone
        return Arch("vit", dict(type="mmdet.TimmViTDet", model=model.split(".")[0]), _vit_key)
    supported = sorted(_RESNET_DEPTH) + ["resnet50d (and 18/34/101/152 d)", "convnext_<size>", "convnextv2_<size>",
                                         "vit_<tiny|small|base|large>_patch16_<size>"]
    raise UserError(f"no mmdet backbone mapping for timm model {model!r}; supported: {', '.join(supported)}")


def infer_model(sd: Mapping[str, torch.Tensor]) -> str:
    """Guess the timm model name from a state dict's keys and shapes (ResNet depths, ConvNeXt sizes)."""
    if "stem.0.weight" in sd and any(".mlp.fc1." in k for k in sd):
        v2 = any(".grn." in k for k in sd)
        dims = tuple(sd[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0] for i in range(4))
        depths = tuple(len({k.split(".")[3] for k in sd if k.startswith(f"stages.{i}.blocks.")}) for i in range(4))
        from mmpretrain.models.backbones.convnext import ConvNeXt
        for name, a in ConvNeXt.arch_settings.items():
            if tuple(a["channels"]) == dims and tuple(a["depths"]) == depths:
                return f"convnext{'v2' if v2 else ''}_{name}"
        raise UserError(f"ConvNeXt with channels {dims} and depths {depths} matches no known size")
    if "blocks.0.attn.qkv.weight" in sd and "patch_embed.proj.weight" in sd and "pos_embed" in sd:
        return _infer_vit(sd)
    if "layer1.0.conv1.weight" in sd:
        deep = "conv1.0.weight" in sd
        blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        bottleneck = "layer1.0.conv3.weight" in sd
        table = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50,
                 (3, 4, 23, 3, True): 101, (3, 8, 36, 3, True): 152}
        depth = table.get((*blocks, bottleneck))
        if depth is None:
            raise UserError(f"ResNet with blocks {blocks} matches no standard depth")
        return f"resnet{depth}{'d' if deep else ''}"
    raise UserError("cannot infer the architecture from the checkpoint's keys (a model's original layout?); "
                    "pass --model")


_VIT_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large"}


def _infer_vit(sd: Mapping[str, torch.Tensor]) -> str:
    width, patch = sd["pos_embed"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = round((sd["pos_embed"].shape[1] - ("cls_token" in sd)) ** 0.5)
    size = _VIT_SIZES.get((width, depth))
    if size is None or patch != 16:
        raise UserError(f"ViT with width {width}, depth {depth}, patch {patch} matches no supported size "
                        "(vit_tiny/small/base/large_patch16)")
    return f"vit_{size}_patch16_{grid * patch}"


def build_mm_backbone(arch: Arch) -> nn.Module:
    from mmengine.registry import MODELS
    import mmdet.models  # noqa: F401  (register)
    import mmpretrain.models  # noqa: F401  (register)
    from . import vitdet  # noqa: F401  (register TimmViTDet)
    return MODELS.build(dict(arch.mm_cfg))


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """Rename a timm state dict to the mm backbone's keys, reshape GRN, and check it fits exactly."""
    arch = get_arch(model)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        nk = arch.rename(k)
        if nk is None:
            continue
        if arch.family == "convnext" and nk.endswith((".grn.gamma", ".grn.beta")):
            v = v.reshape(-1)  # (1, 1, 1, C) in the original ConvNeXt-V2 release, (C,) in timm/mmpretrain
        if arch.family == "convnext" and ".pointwise_conv" in nk and nk.endswith(".weight") and v.ndim == 4:
            v = v.flatten(1)  # timm's conv_mlp variants (atto..nano) use 1x1 convs; mmpretrain uses Linear
        out[nk] = v
    target = build_mm_backbone(arch).state_dict()
    # mmpretrain adds a norm after every output stage; only the last one has a timm counterpart (head.norm).
    optional = {k for k in target if re.match(r"norm[0-2]\.", k)} if arch.family == "convnext" else set()
    optional |= {k for k in target if k.endswith("num_batches_tracked")}
    problem = key_mismatch(target, out, optional)
    if problem:
        raise UserError(f"checkpoint does not fit {model}: {problem}")
    return out


def to_timm_layout(sd: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """The weights in timm's layout for MODEL, through the model's own timm filter (the official ConvNeXt-V2
    names, GRN 1x1x1xC, ...) and checked strictly against timm's model; one line names what does not fit.

    mmpretrain's extra ConvNeXt norms (norm0-2, no timm counterpart) pass through under their own names, and its
    Linear pointwise weights take the shape of timm's 1x1 convs where timm has those (conv_mlp: atto..nano)."""
    extras = {k: v for k, v in sd.items() if _MM_EXTRA.match(k)}
    m, fitted, note = prepare_model(model, {k: v for k, v in sd.items() if k not in extras})
    own = m.state_dict()
    for k, v in fitted.items():
        if k in own and v.dim() == 2 and own[k].dim() == 4 and v.numel() == own[k].numel():
            fitted[k] = v.reshape(own[k].shape)
    fit_strict(m, fitted, "checkpoint", note=note)
    return {**fitted, **extras}


def student_model(src: str | Path, sd: Mapping[str, torch.Tensor], model: str | None = None) -> str:
    """The timm name of a student: ``--model``, else a hub folder's config.json, else inferred from the keys."""
    if model:
        return model
    return hub_architecture(src) if is_hub_folder(src) else infer_model(sd)


def convert_checkpoint(src: str | Path, dst: str | Path, model: str | None = None, allow_pickle: bool = False,
                       prefer_ema: bool = False) -> tuple[str, Path]:
    """Read SRC, convert for MODEL (inferred when None), write DST atomically; returns (model, dst)."""
    sd = read_student(src, allow_pickle, prefer_ema)
    model = student_model(src, sd, model)
    return write_backbone(to_timm_layout(sd, model), dst, model, source=str(src))


def write_backbone(sd: Mapping[str, torch.Tensor], dst: str | Path, model: str | None = None,
                   source: str = "") -> tuple[str, Path]:
    """Convert student weights already read (callers that also verify or check them read the file once)."""
    model = model or infer_model(sd)
    mm = convert_state_dict(sd, model)
    atomic_save({"state_dict": {f"backbone.{k}": v for k, v in mm.items()},
                 "meta": {"timm_model": model, "source": source}}, dst)
    return model, Path(dst)


def verify_checks(model: str) -> list[str]:
    """What each figure of ``verify`` compares, for the tool's report."""
    if get_arch(model).family == "vit":
        return ["last map, global attention vs timm", "windowed (ViTDet) vs the per-window reference"]
    return [f"stage {i + 1} vs timm" for i in range(4)]


@torch.no_grad()
def verify(sd: Mapping[str, torch.Tensor], model: str, img_size: int = 224, batch: int = 2,
           seed: int = 0) -> list[float]:
    """Max abs difference of each stage output, timm vs the converted mm backbone (eval mode).

    A ViT gives two figures: the backbone with global attention and the class token against timm's
    ``forward_intermediates`` at ``img_size``, and the detection backbone (windows of 14, four global blocks)
    against a per-window reference (``transfer.vitdet.windowed_reference``) at a size whose patch grid needs
    padding to whole windows."""
    import timm
    arch = get_arch(model)
    t = timm.create_model(model, pretrained=False, num_classes=0)
    own = t.state_dict()
    # timm's conv_mlp ConvNeXts (atto..nano) hold 1x1 convs where mmpretrain (an OpenMMLab source) has Linear
    ref_sd = {}
    for k, v in sd.items():
        if k.startswith(("fc.", "head.fc.")) or k.startswith("head.") and k not in own or _MM_EXTRA.match(k):
            continue
        if k in own and v.shape != own[k].shape and v.numel() == own[k].numel():
            v = v.reshape(own[k].shape)
        ref_sd[k] = v
    t.load_state_dict(ref_sd, strict=True)
    t.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img_size, img_size, generator=g)
    if arch.family == "vit":
        return _verify_vit(t, sd, model, x)
    mm = build_mm_backbone(arch)
    missing, unexpected = mm.load_state_dict(convert_state_dict(sd, model), strict=False)
    mm.eval()
    ref = t.forward_intermediates(x, indices=4, intermediates_only=True)  # strides 4/8/16/32
    if arch.family == "convnext":  # compare raw stage outputs (mmpretrain's norm_i come after them)
        outs, h = [], x
        for i in range(4):
            h = mm.stages[i](mm.downsample_layers[i](h))
            outs.append(h)
    else:
        outs = mm(x)
    return [float((a - b).abs().max()) for a, b in zip(ref, outs)]


def _verify_vit(t: nn.Module, sd: Mapping[str, torch.Tensor], model: str, x: torch.Tensor) -> list[float]:
    from .vitdet import TimmViTDet, windowed_reference
    weights = convert_state_dict(sd, model)
    exact = TimmViTDet(model, global_blocks=range(len(t.blocks)), use_cls_token=True, drop_path_rate=0.0).eval()
    exact.load_state_dict(weights, strict=True)
    ref = t.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
    diffs = [float((ref - exact(x)[0]).abs().max())]
    windowed = TimmViTDet(model, drop_path_rate=0.0).eval()
    windowed.load_state_dict(weights, strict=True)
    size = x.shape[-1] + 2 * 16 * 3  # three more patches each side: the grid is no whole number of windows
    y = torch.nn.functional.interpolate(x, size=(size, size + 32), mode="bilinear")
    diffs.append(float((windowed_reference(windowed, y) - windowed(y)[0]).abs().max()))
    return diffs
