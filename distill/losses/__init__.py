"""KD losses by name: ``build_loss('kd', temperature=1.0)``. One module per method."""
from . import bkd, cc, crd, dist, dkd, kd, lskd, review, rkd  # noqa: F401  (register)
from .registry import build_loss, get_loss_class, list_losses, register_loss

__all__ = ["build_loss", "get_loss_class", "list_losses", "register_loss"]
