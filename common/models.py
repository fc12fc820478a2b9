"""timm model creation with a clear error for unknown names (the name list is timm's own); shared by every tool."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch.nn as nn

from common.io import UserError


def create_model(name: str, pretrained: bool = False, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """timm.create_model; ``img_size`` reaches models that take it (ViTs) and is ignored by CNNs.

    ``local-dir:PATH`` (a hub folder: config.json + weights) and ``hf-hub:ID`` are timm's own sources."""
    if name.startswith("local-dir:"):
        if not (Path(name[len("local-dir:"):]) / "config.json").is_file():
            raise UserError(f"{name}: no config.json in that folder (a timm hub folder holds config.json and "
                            "model.safetensors)")
    elif not name.startswith("hf-hub:") and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UserError(f"unknown timm model {name!r}{hint}")
    try:
        if img_size is not None:
            try:
                return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError:  # CNNs take any size and have no img_size argument
                pass
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as e:  # pretrained weights unreachable offline, etc.
        if pretrained:
            raise UserError(f"could not fetch pretrained weights for {name}: {str(e).splitlines()[0][:200]} "
                            "(offline? pass a local checkpoint instead)") from None
        raise
