"""Students in the hub layout: next to each student.pth, a folder with ``model.safetensors`` + ``config.json`` as
timm writes it (``timm.models.save_for_hf``), so that the ecosystem loads it with no vanillakd code:

    model = timm.create_model("local-dir:output/run/timm", pretrained=True)

config.json holds the architecture, num_classes, the arguments the student was built with (a ViT's img_size) and a
pretrained_cfg with this run's preprocessing (input size, test input size, mean, std, crop_pct, interpolation).
Folders: ``timm/`` (the student), ``timm_ema/`` (the first EMA) and ``timm_ema_<decay>/`` (further EMAs), as
``student.pth``, ``student_ema.pth`` and ``student_ema_<decay>.pth``. ``timm.models.push_to_hf_hub`` publishes such a
student (docs/released_models.md). A folder is written beside its target and renamed into place, so a kill leaves
the previous folder or the new one, not a half-written one.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from common.diskfull import writing

from .settings import ema_suffix


# the student's pretrained_cfg still names timm's default weights for the architecture: say whose these are
_PROVENANCE = {"tag": "vanillakd", "paper_ids": "arXiv:2305.15781", "origin_url": None}


def run_data_config(args: argparse.Namespace) -> dict:
    """The preprocessing the run trained and evaluated with, as timm's data config (mean/std: the model's unless
    the run set them)."""
    size, test = args.img_size, args.test_img_size or args.img_size
    cfg: dict = {"input_size": (3, size, size), "crop_pct": args.crop_pct, "interpolation": args.interpolation}
    if test != size:
        cfg["test_input_size"] = (3, test, test)
    if args.mean:
        cfg["mean"] = tuple(args.mean)
    if args.std:
        cfg["std"] = tuple(args.std)
    return cfg


def save_hub_folder(model: nn.Module, dst: str | os.PathLike, data_config: dict) -> Path:
    """timm's save_for_hf (safetensors only) into DST, replacing a previous folder."""
    import timm
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # safetensors wants contiguous CPU tensors: a channels-last or GPU student is written from a plain CPU copy
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in model.state_dict().values()):
        model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    # a full disk: one line, the temporary folder removed, the previous one intact
    with writing(dst, "folder"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
        old = dst.with_name(f".{dst.name}.old")
        try:
            with writing(dst, "folder"):  # measures the space before the finally below frees it
                timm.models.save_for_hf(model, str(tmp), model_config={"pretrained_cfg": _PROVENANCE},
                                        safe_serialization=True, data_config=data_config)
            tmp.chmod(0o755)
            if dst.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dst, old)
            os.replace(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return dst


def save_hub_folders(student: nn.Module, emas: list[nn.Module], out_dir: str | os.PathLike,
                     args: argparse.Namespace) -> list[Path]:
    """timm/ for the student, timm_ema*/ for its EMAs, in OUT_DIR (beside student.pth and student_ema*.pth)."""
    cfg = run_data_config(args)
    out = [save_hub_folder(student, Path(out_dir) / "timm", cfg)]
    for i, ema in enumerate(emas):
        suffix = ema_suffix(args, i)
        out.append(save_hub_folder(ema, Path(out_dir) / f"timm_ema{suffix}", cfg))
    return out
