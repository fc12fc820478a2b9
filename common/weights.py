"""User-supplied weight files, one way in for every tool: read safely, unwrap, map with the model's own timm filter,
then load strictly.

A user's file may come from our runs, from timm (``CheckpointSaver``'s ``state_dict`` / ``state_dict_ema``, a
``.safetensors`` file, a hub folder with ``model.safetensors`` + ``config.json``), or from a model's original
repository (the official ConvNeXt-V2 release, BEiT / BEiT v2, DeiT). timm already knows those layouts: the module
that registers a model holds its ``checkpoint_filter_fn``, which ``build_model_with_cfg`` hands to
``load_pretrained`` as ``pretrained_filter_fn`` and which maps the original repository's names to timm's. We call
that same filter, but follow it with a strict load instead of timm's: on timm's pretrained path a classifier whose
class count differs from the pretrained config is dropped without a word (timm's ``load_pretrained``: ``strict=False`` when ``num_classes`` differs). Whatever the
filter leaves unmatched is named in one line. Reading stays safe: ``torch.load(weights_only=True)`` or safetensors
(neither runs code); ``--unsafe-load`` is the opt-in for full pickles.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from common.io import UserError, load_checkpoint, load_strict, unwrap_state_dict
from common.models import create_model

# what a hub folder (timm's save_for_hf / push_to_hf_hub layout) holds, preferred first
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# timm's names for a model module's checkpoint filter: checkpoint_filter_fn in almost every module; the others
# where a module names it otherwise (vision encoders with a separate classifier filter, regnet/vgg, densenet)
_FILTER_NAMES = ("checkpoint_filter_fn", "checkpoint_filter_fn_classifier", "_filter_fn",
                 "_filter_torchvision_pretrained")


def is_hub_folder(path: str | os.PathLike) -> bool:
    """A folder in timm's hub layout: config.json next to the weights."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def hub_architecture(path: str | os.PathLike) -> str:
    """The timm architecture a hub folder's config.json names."""
    cfg_file = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
        return str(cfg.get("architecture") or cfg["pretrained_cfg"]["architecture"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{cfg_file} is not a timm model config ({type(e).__name__}: {str(e)[:120]})") from None


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False,
                    prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights in a file or hub folder, unwrapped (``model``, ``state_dict``, ``state_dict_ema`` with
    ``prefer_ema``, DDP's ``module.``, our run files), not yet mapped to any model."""
    path = Path(path)
    if path.is_dir():
        for name in HUB_WEIGHTS:
            if (path / name).is_file():
                return read_state_dict(path / name, allow_pickle, prefer_ema)
        raise UserError(f"{path} is a folder without {' or '.join(HUB_WEIGHTS)} (a timm hub folder holds "
                        "model.safetensors and config.json)")
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else load_checkpoint(path, allow_pickle)
    if isinstance(obj, Mapping) and isinstance(obj.get("settings"), Mapping):  # our last.pth
        settings = obj["settings"]
        if len(settings) != 1:
            raise UserError(f"{path} holds {len(settings)} students ({', '.join(settings)}); "
                            "use that run's student.pth instead")
        s = next(iter(settings.values()))
        obj = s["ema"][0] if prefer_ema and s.get("ema") else s["student"]
    return unwrap_state_dict(obj, prefer_ema=prefer_ema)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"corrupt or unreadable safetensors file {path}: {first[:200]}") from None


def architecture(model: nn.Module) -> str:
    """The timm name a model was built as (also for models built from a hub folder)."""
    return str(getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__)


def timm_filter(arch: str) -> Callable | None:
    """The checkpoint filter of the timm module that registers ``arch`` (e.g. timm.models.convnext's
    checkpoint_filter_fn for convnextv2_tiny), None for models whose files need no mapping (ResNets)."""
    import timm
    if not timm.is_model(arch):
        return None
    module = sys.modules.get(timm.models.model_entrypoint(arch.split(".")[0]).__module__)
    for name in _FILTER_NAMES:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def _filtered(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict mapped by the model's own filter, called as timm's load_pretrained calls it, and a note
    naming the filter's failure ('' if none). A filter that cannot make sense of the file (a layout it does not
    know, another architecture or size) raises; then the keys go on unmapped, and the strict load that follows
    names what does not fit."""
    fn = timm_filter(architecture(model))
    if fn is None:
        return dict(state_dict), ""
    try:
        try:
            out = fn(dict(state_dict), model)
        except TypeError:  # filters of one argument, as timm's load_pretrained allows
            out = fn(dict(state_dict))
    except Exception as e:  # noqa: BLE001  (any failure of a foreign filter means: not a layout it maps)
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        return dict(state_dict), f" (timm's {fn.__module__}.{fn.__name__} could not map it: {type(e).__name__}" \
                                 f"{': ' + first if first else ''})"
    return (dict(out), "") if isinstance(out, Mapping) else (dict(state_dict), "")


def fit_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint",
               note: str = "") -> None:
    """Strict load of mapped weights, with one line naming what is left unmatched (and, in ``note``, why timm's
    filter could not map the file)."""
    try:
        load_strict(model, state_dict, what, target=architecture(model))
    except UserError as e:
        raise UserError(f"{e}{note}") from None


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                 what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's timm filter, then a strict load; returns the mapped state dict (timm's layout)."""
    fitted, note = _filtered(model, state_dict)
    fit_strict(model, fitted, what, note=note)
    return fitted


def classifier_classes(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> int:
    """Classes of the classifier a (mapped) state dict holds for this model; 0 for a headless file."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    for head in (heads,) if isinstance(heads, str) else heads:
        w = state_dict.get(f"{head}.weight")
        if isinstance(w, torch.Tensor) and w.dim() >= 1:
            return int(w.shape[0])
    return 0


def prepare_model(name: str, state_dict: Mapping[str, torch.Tensor], num_classes: int | None = None,
                  img_size: int | None = None, **kwargs: Any) -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    """A timm model for a user's weights, the weights mapped by its filter (not yet loaded: ``fit_strict``) and a
    note on the filter's failure ('' if none); the class count is the file's unless ``num_classes`` is given.

    ``img_size`` reaches models that take one (ViTs, BEiT: their filters resample position tables to it)."""
    model = create_model(name, img_size=img_size, **({"num_classes": num_classes} if num_classes is not None
                                                      else {}), **kwargs)
    fitted, note = _filtered(model, state_dict)
    if num_classes is None:
        n = classifier_classes(model, fitted)
        if n != getattr(model, "num_classes", n):
            model.reset_classifier(n)
    return model, fitted, note


def build_with_weights(name: str, state_dict: Mapping[str, torch.Tensor], num_classes: int | None = None,
                       img_size: int | None = None, what: str = "checkpoint",
                       **kwargs: Any) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A timm model holding a user's weights (filter, then strict load), and the weights in timm's layout."""
    model, fitted, note = prepare_model(name, state_dict, num_classes, img_size, **kwargs)
    fit_strict(model, fitted, what, note=note)
    return model, fitted


def load_model(name: str | None, path: str | os.PathLike, allow_pickle: bool = False, prefer_ema: bool = False,
               num_classes: int | None = None, img_size: int | None = None, what: str | None = None,
               **kwargs: Any) -> nn.Module:
    """A timm model from a weight file (``name`` says which model) or a hub folder (its config.json says which,
    with the preprocessing it was trained with; ``name``, when given, must agree)."""
    path = Path(path)
    if is_hub_folder(path):
        arch = hub_architecture(path)
        if name and name.split(".")[0] != arch.split(".")[0] and not name.startswith("local-dir:"):
            raise UserError(f"{path} holds a {arch}, not a {name}")
        name = f"local-dir:{path}"
    if not name:
        raise UserError(f"give the timm model name for {path}")
    sd = read_state_dict(path, allow_pickle, prefer_ema)
    model, _ = build_with_weights(name, sd, num_classes, img_size, what or f"checkpoint {path}", **kwargs)
    return model
