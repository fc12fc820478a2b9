"""The run's state on disk: ``last.pth`` (every setting's student, optimizer, scheduler, EMAs, scaler, KD helpers
and history, for --resume) and each setting's students as plain timm state dicts (``student.pth``,
``student_ema*.pth``). Written atomically; read back with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.io import UserError, atomic_save, load_checkpoint, load_strict

from .hub import save_hub_folders
from .run_setup import Run
from .settings import Setting, ema_suffix

# 2: the position inside the epoch ("step") and, mid-epoch, every rank's RNG states ("rng") and the epoch's partial
# statistics ("partial"), so that a run stopped by a signal goes on from the step it stopped at. 1 (epoch
# boundaries only) still reads, as step 0.
CHECKPOINT_VERSION = 2
READS = (1, 2)


@dataclass
class Position:
    """Where a run is: the epoch under way (0-based; the number of finished epochs when ``step`` is 0) and its batches
    done (``step``; the epoch's step count once trained but not yet validated). Mid-epoch it carries what this rank
    needs to go on exactly: its RNG states after ``step`` and, on rank 0, the epoch's statistics so far."""

    epoch: int = 0
    step: int = 0
    rng: dict | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # per setting: train-loss sums, over all ranks
    skipped_images: int = 0
    seconds: float = 0.0


def sanitize_args(args: argparse.Namespace) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def rng_state() -> dict:
    """This process's python, numpy and torch (CPU, and its CUDA device's when in use) RNG states, as data that
    loads with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device (distill/distributed.py sets it)
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(x):
    """random.setstate wants the tuples getstate gave (a checkpoint may hand back lists)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def resume_run(run: Run) -> Position:
    """--resume: restore every setting from last.pth; returns where to go on from."""
    args = run.args
    if not args.resume:
        return Position()
    path = run.ckpt_path if args.resume == "auto" else Path(args.resume)
    pos = _load_last(path, run.settings, args, run.info.rank, run.info.world_size, run.steps_per_epoch)
    if run.info.is_main:
        where = f" at epoch {pos.epoch}" + (f" + step {pos.step} of {run.steps_per_epoch}" if pos.step else "")
        print(f"resumed from {path}{where}", flush=True)
    return pos


def save_last(path: Path, pos: Position, settings: list[Setting], args: argparse.Namespace,
              world_size: int = 1, rngs: list[dict] | None = None) -> None:
    """``last.pth`` at ``pos``; mid-epoch with every rank's RNG states (``rngs``, in rank order)."""
    state = {"version": CHECKPOINT_VERSION, "epoch": pos.epoch, "step": pos.step, "world_size": world_size,
             "args": sanitize_args(args), "settings": {}}
    if pos.step:
        state["rng"] = rngs
        state["partial"] = {"sums": pos.sums, "skipped_images": pos.skipped_images, "seconds": pos.seconds}
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
            "skipped_steps": st.skipped_steps,
        }
    atomic_save(state, path)


def save_students(st: Setting, args: argparse.Namespace) -> None:
    """Plain timm state dicts: ``timm.create_model(name, num_classes=N)`` loads them strictly."""
    atomic_save(st.module.state_dict(), st.out_dir / "student.pth")
    for i, ema in enumerate(st.emas):
        suffix = ema_suffix(args, i)
        atomic_save(ema.module.state_dict(), st.out_dir / f"student_ema{suffix}.pth")
    save_hub_folders(st.module, [e.module for e in st.emas], st.out_dir, args)  # timm/, timm_ema*/ (distill/hub.py)


def _load_last(path: Path, settings: list[Setting], args: argparse.Namespace, rank: int, world_size: int,
               steps_per_epoch: int) -> Position:
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    state = load_checkpoint(path)  # weights_only: our own files hold only tensors and plain containers
    if not isinstance(state, dict) or state.get("version") not in READS or "settings" not in state:
        raise UserError(f"{path} is not a vanillakd run checkpoint")
    pos = Position(int(state["epoch"]), int(state.get("step", 0)))
    if pos.step:
        _check_mid_epoch(path, state, pos, args, world_size, steps_per_epoch)
        pos.rng = state["rng"][rank]
        if rank == 0:  # the epoch's sums so far count once, on rank 0
            partial = state["partial"]
            pos.sums = dict(partial["sums"])
            pos.skipped_images, pos.seconds = int(partial["skipped_images"]), float(partial["seconds"])
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
        st.skipped_steps = int(s.get("skipped_steps", 0))
    if pos.epoch >= args.epochs and args.epochs > 0:
        print(f"{path}: already trained {pos.epoch} of {args.epochs} epochs", flush=True)
    return pos


def _check_mid_epoch(path: Path, state: dict, pos: Position, args: argparse.Namespace, world_size: int,
                     steps_per_epoch: int) -> None:
    """A run stopped mid-epoch goes on only with the layout it stopped with: each rank's next batch and RNG states
    depend on the world size and the batch size."""
    saved_world, saved_batch = int(state.get("world_size", 1)), state["args"].get("batch_size")
    where = f"{path} stopped in epoch {pos.epoch + 1} after step {pos.step}"
    if saved_world != world_size:
        raise UserError(f"{where} with {saved_world} process(es); resume it with {saved_world} (this run has "
                        f"{world_size})")
    if saved_batch != args.batch_size:
        raise UserError(f"{where} with --batch-size {saved_batch}; resume it with the same batch size (this run "
                        f"has {args.batch_size})")
    if pos.step > steps_per_epoch:
        raise UserError(f"{where}, but this run's epochs have {steps_per_epoch} steps (--limit-train-batches or "
                        "the data changed)")
