"""The two profiles a rehearsal runs under, and what each changes from the paper's settings.

- ``cpu``: one process per path, sized for a couple of cores: a per-process batch that fits in host memory, a few
  iterations, tiny val sets. The detection configs' GPU-only parts are swapped, explicitly and listed in the
  report: AmpOptimWrapper -> OptimWrapper (``tools/transfer.py --no-amp``, which also drops ``loss_scale``),
  SyncBN -> BN (``--cfg-options``). Distillation keeps the recipes' ``--amp`` (bfloat16 autocast on a CPU).
- ``gpu``: every path under torchrun on all GPUs (nccl), the recipes' per-GPU batch, AMP, the detection
  configs exactly as shipped.

Either way only the number of iterations, the batch size where memory demands it, workers and data paths
differ from what a user runs for the full schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from common.io import UserError

PROFILES = ("cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    name: str
    launcher: str  # "none": one plain process per command; "torchrun": nproc processes (and --launcher pytorch)
    nproc: int
    distill_batch: int | None  # per-process batch; None: the recipe's (256 per GPU)
    distill_steps: int  # --limit-train-batches: steps per epoch (the first is warm-up and not timed)
    det_batch: int | None  # detection images per process; None: the config's (4 for R50, 2 for ConvNeXt-V2)
    det_iters: int  # iterations per detection epoch (one epoch trained, one more after the resume)
    val_images: int  # images in the ImageNet val view (student and teacher validation)
    det_val_images: int  # images in the COCO val view (CocoMetric, tools/test.py, mmdet's tools/test.py)
    workers: int  # dataloader workers per process
    swap_gpu_only: bool  # AmpOptimWrapper -> OptimWrapper and SyncBN -> BN in the detection configs
    onnx_det_size: int  # square side of the detection-size ONNX export (gpu: 800, the 1333x800 pipeline's short
    # side; cpu: 512, as verifying dynamic H/W at 800 and 832 costs minutes on 2 cores)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """The profile's deviations from the paper's settings, one line each (the report lists them)."""
        out = [f"launcher: {self.launcher}" + (f", {self.nproc} processes" if self.launcher == "torchrun" else
                                               " (one process per command)")]
        out.append("distillation batch per process: " + (str(self.distill_batch) if self.distill_batch
                                                        else "the recipe's (256)"))
        out.append("detection images per process: " + (str(self.det_batch) if self.det_batch
                                                      else "the config's (4 for R50, 2 for ConvNeXt-V2)"))
        out.append(f"iterations: {self.distill_steps} distillation steps per path (--limit-train-batches, "
                   f"--epochs 1; the kill-and-resume path 2 epochs), {self.det_iters} detection iteration(s) per "
                   f"epoch (--cfg-options train_cfg.max_epochs=2: killed after epoch 1, resumed for epoch 2; the iteration-"
                   f"based ViTDet configs: 2 x {self.det_iters} iterations, killed after iteration {self.det_iters}); the "
                   f"first iteration of each process is warm-up and not timed where a process runs more than one")
        out.append(f"val sets: {self.val_images} ImageNet images, {self.det_val_images} COCO images; dataloader "
                   f"workers: {self.workers}")
        if self.swap_gpu_only:
            out.append("detection: AmpOptimWrapper -> OptimWrapper (tools/transfer.py --no-amp, drops loss_scale), "
                       "SyncBN -> BN (--cfg-options ...norm_cfg.type=BN)")
        else:
            out.append("detection configs exactly as shipped (AMP, SyncBN)")
        out.append(f"ONNX at a detection size: {self.onnx_det_size}x{self.onnx_det_size} (square"
                   + ("; the 1333x800 pipeline's short side" if self.onnx_det_size == 800 else
                      "; smaller than the pipeline's 800 short side, to keep the cpu profile short")
                   + "), dynamic H/W verified at that size and +32; the ViT detection pyramids at "
                   + f"{self.onnx_det_size}x{self.onnx_det_size * 5 // 4}, verified there and at a second size")
        return out + self.notes


def gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def build_profile(name: str, nproc: int | None = None, distill_batch: int | None = None,
                  distill_steps: int | None = None, det_batch: int | None = None, det_iters: int | None = None,
                  val_images: int | None = None, det_val_images: int | None = None,
                  workers: int | None = None) -> Profile:
    """A profile with the user's overrides (None keeps the profile's value)."""
    if name == "cpu":
        p = Profile("cpu", "none", 1, distill_batch=4, distill_steps=4, det_batch=1, det_iters=1, val_images=2,
                    det_val_images=1, workers=2, swap_gpu_only=True, onnx_det_size=512)
    elif name == "gpu":
        gpus = gpu_count()
        if gpus == 0:
            raise UserError("--profile gpu needs a GPU and torch sees none (use --profile cpu)")
        p = Profile("gpu", "torchrun", gpus, distill_batch=None, distill_steps=5, det_batch=None, det_iters=4,
                    val_images=8 * gpus, det_val_images=2 * gpus, workers=8, swap_gpu_only=False, onnx_det_size=800)
    else:
        raise UserError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    changes = {k: v for k, v in dict(nproc=nproc, distill_batch=distill_batch, distill_steps=distill_steps,
                                      det_batch=det_batch, det_iters=det_iters, val_images=val_images,
                                      det_val_images=det_val_images, workers=workers).items() if v is not None}
    for k, v in changes.items():
        if v < (0 if k == "workers" else 1):
            raise UserError(f"--{k.replace('_', '-')} must be at least {0 if k == 'workers' else 1}, got {v}")
    if "nproc" in changes and p.launcher == "none" and changes["nproc"] > 1:
        changes["launcher"] = "torchrun"  # several CPU processes: torchrun with gloo, as a user would
    return replace(p, **changes)
