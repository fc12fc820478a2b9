"""The run's state on disk: ``last.pth`` (every setting's student, optimizer, scheduler, EMAs, scaler, KD helpers
and history, for --resume) and each setting's students as plain timm state dicts (``student.pth``,
``student_ema*.pth``). Written atomically; read back with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.io import UserError, atomic_save, load_checkpoint, load_strict

from .hub import save_hub_folders
from .run_setup import Run
from .settings import Setting, ema_suffix

CHECKPOINT_VERSION = 1


def sanitize_args(args: argparse.Namespace) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def resume_run(run: Run) -> int:
    """--resume: restore every setting from last.pth; returns the epoch to start from."""
    args = run.args
    if not args.resume:
        return 0
    path = run.ckpt_path if args.resume == "auto" else Path(args.resume)
    start_epoch = _load_last(path, run.settings, args)
    if run.info.is_main:
        print(f"resumed from {path} at epoch {start_epoch}", flush=True)
    return start_epoch


def save_last(path: Path, epoch: int, settings: list[Setting], args: argparse.Namespace) -> None:
    state = {"version": CHECKPOINT_VERSION, "epoch": epoch, "args": sanitize_args(args), "settings": {}}
    for st in settings:
        state["settings"][st.name] = {
            "model_name": st.model_name,
            "student": st.module.state_dict(),
            "optimizer": st.optimizer.state_dict(),
            "scheduler": st.scheduler.state_dict(),
            "ema": [e.module.state_dict() for e in st.emas],
            "scaler": st.scaler.state_dict() if st.scaler is not None else None,
            "kd_helpers": st.kd_loss.state_dict() if st.kd_loss is not None else {},
            "history": st.history,
        }
    atomic_save(state, path)


def save_students(st: Setting, args: argparse.Namespace) -> None:
    """Plain timm state dicts: ``timm.create_model(name, num_classes=N)`` loads them strictly."""
    atomic_save(st.module.state_dict(), st.out_dir / "student.pth")
    for i, ema in enumerate(st.emas):
        suffix = ema_suffix(args, i)
        atomic_save(ema.module.state_dict(), st.out_dir / f"student_ema{suffix}.pth")
    save_hub_folders(st.module, [e.module for e in st.emas], st.out_dir, args)  # timm/, timm_ema*/ (distill/hub.py)


def _load_last(path: Path, settings: list[Setting], args: argparse.Namespace) -> int:
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    state = load_checkpoint(path)  # weights_only: our own files hold only tensors and plain containers
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "settings" not in state:
        raise UserError(f"{path} is not a vanillakd run checkpoint")
    for st in settings:
        if st.name not in state["settings"]:
            raise UserError(f"{path} has no setting {st.name!r} (it has {', '.join(state['settings'])})")
        s = state["settings"][st.name]
        load_strict(st.module, s["student"], f"{path} [{st.name}]")
        st.optimizer.load_state_dict(s["optimizer"])
        st.scheduler.load_state_dict(s["scheduler"])
        for ema, sd in zip(st.emas, s["ema"]):
            ema.module.load_state_dict(sd)
        if st.scaler is not None and s["scaler"]:
            st.scaler.load_state_dict(s["scaler"])
        if st.kd_loss is not None and s["kd_helpers"]:
            st.kd_loss.load_state_dict(s["kd_helpers"])
        st.history = list(s["history"])
    epoch = int(state["epoch"])
    if epoch >= args.epochs and args.epochs > 0:
        print(f"{path}: already trained {epoch} of {args.epochs} epochs", flush=True)
    return epoch
