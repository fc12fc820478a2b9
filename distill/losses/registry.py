"""Name -> KD loss class. Each method lives in its own module and registers itself here, timm-style."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from common.io import UserError

_LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"KD loss {name!r} registered twice")
        _LOSSES[name] = cls
        cls.loss_name = name
        return cls

    return deco


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss_class(name: str) -> type[nn.Module]:
    if name not in _LOSSES:
        raise UserError(f"unknown KD loss {name!r}; known: {', '.join(list_losses())}")
    return _LOSSES[name]


def build_loss(name: str, **hparams: Any) -> nn.Module:
    """Build a registered KD loss with the official defaults, overridden by ``hparams``."""
    cls = get_loss_class(name)
    try:
        return cls(**hparams)
    except TypeError as e:
        raise UserError(f"bad hyper-parameter for KD loss {name!r}: {e}") from None
