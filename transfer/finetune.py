"""Fine-tune an mmdet detector from a distilled student with the mmengine Runner, and write results.json.

The student is converted for the config's backbone (architecture inferred from the checkpoint when
``--model`` is not given, and checked against the config), then loaded through the config's own
``init_cfg=Pretrained`` mechanism. Launchers (none/pytorch/slurm), AMP and resuming are mmengine's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from common.diskfull import DiskFull, as_disk_full
from common.io import UserError

from .coco_check import leaf_datasets, check_config_annotations
from .convert import get_arch, read_student, student_model, to_timm_layout, write_backbone
from .devices import drop_amp, gpu_only_parts

# Modules a config names in custom_imports so that mmdet's own tools (tools/test.py, tools/train.py, mim,
# DetInferencer) build our hooks and file backend without this wrapper.
MM_IMPORTS = ("transfer.hooks", "transfer.atomic_backend")


def use_faster_coco_eval() -> None:
    """Make pycocotools' modules faster-coco-eval's (same numbers, ~3x faster) before mmdet imports them."""
    try:
        import faster_coco_eval
        faster_coco_eval.init_as_pycocotools()
    except ImportError:  # plain pycocotools still works
        pass


def load_config(path: str | Path, cfg_options: dict | None = None, data_root: str | Path | None = None):
    """Read a config; ``data_root`` (``--data-root``) is applied before ``cfg_options``, which can refine it."""
    from mmengine.config import Config
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # syntax errors, missing _base_ files
        raise UserError(f"cannot read config {path}: {str(e).splitlines()[0][:200]}") from None
    if data_root is not None:
        set_data_root(cfg, data_root)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def set_data_root(cfg, root: str | Path) -> None:
    """``--data-root DIR``: a COCO 2017 folder anywhere, in one flag instead of five ``--cfg-options`` keys.

    Sets ``data_root`` of every train/val/test dataset (inside dataset wrappers too), so their relative
    ``ann_file`` and image prefixes resolve under DIR, and points each split's CocoMetric at the annotation
    file its dataset reads (``DIR/annotations/instances_val2017.json`` for the paper configs)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data-root {root}: no such folder (a COCO 2017 folder: annotations/, train2017/, val2017/)")
    r = str(root.resolve()) + "/"
    cfg.data_root = r
    for split in ("train", "val", "test"):
        loader = cfg.get(f"{split}_dataloader")
        anns = []
        for ds in leaf_datasets(loader.get("dataset") if loader else None):
            ann = ds.get("ann_file")
            if ann and os.path.isabs(str(ann)):
                raise UserError(f"--data-root: the {split} dataset names an absolute ann_file ({ann}); give it "
                                "relative to data_root, or set the paths with --cfg-options")
            ds.data_root = r
            if ann:
                anns.append(str(ann))
        evaluators = cfg.get(f"{split}_evaluator")
        for ev in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            if ev is not None and str(ev.get("type", "")).split(".")[-1] == "CocoMetric" and anns:
                ev.ann_file = os.path.join(r, anns[0])


def _check_backbone_fits(backbone_cfg: dict, model: str) -> None:
    arch = get_arch(model)
    want = arch.mm_cfg["type"].split(".")[-1]
    have = str(backbone_cfg.get("type", "")).split(".")[-1]
    if have != want:
        raise UserError(f"the config's backbone is {have} but the checkpoint is {model} (needs {want})")
    for key in ("depth", "arch", "model"):
        if key in arch.mm_cfg and key in backbone_cfg and backbone_cfg[key] != arch.mm_cfg[key]:
            raise UserError(f"the config's backbone has {key}={backbone_cfg[key]} but the checkpoint is "
                            f"{model} ({key}={arch.mm_cfg[key]})")
    if arch.family == "convnext" and bool(backbone_cfg.get("use_grn", False)) != arch.mm_cfg["use_grn"]:
        raise UserError(f"the config's ConvNeXt has use_grn={backbone_cfg.get('use_grn', False)} but {model} "
                        f"needs use_grn={arch.mm_cfg['use_grn']}")


def prepare_config(config: str | Path, checkpoint: str | Path | None, model: str | None = None,
                   work_dir: str | Path | None = None, launcher: str = "none", cfg_options: dict | None = None,
                   resume: bool = False, amp: bool | None = None, allow_pickle: bool = False,
                   random_init: bool = False, data_root: str | Path | None = None):
    """Resolve the config for a fine-tune: convert the student and point the backbone's init_cfg at it.

    ``random_init`` trains the detector from a randomly initialised backbone instead: the baseline that shows
    what a backbone's pre-training is worth on the same schedule. ``amp``: None keeps the config's choice,
    True turns AMP on, False trains in fp32 (``--no-amp``). ``data_root``: see ``set_data_root``."""
    cfg = load_config(config, cfg_options, data_root)
    _check_devices(cfg, config, launcher, amp)
    cfg.work_dir = str(work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(config).stem)
    cfg.launcher = launcher
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    if checkpoint and random_init:
        raise UserError("give --checkpoint or --random-init, not both")
    student = None  # recorded in results.json; unknown on a resume without --checkpoint
    if random_init:
        if model:
            _check_backbone_fits(cfg.model.backbone, model)
        cfg.model.backbone.init_cfg = None
        student = {"timm_model": None, "source": None}
    elif checkpoint:
        sd = read_student(checkpoint, allow_pickle)
        model = student_model(checkpoint, sd, model)
        _check_backbone_fits(cfg.model.backbone, model)
        dst = Path(cfg.work_dir) / "backbone.pth"
        if not (resume and dst.is_file()):
            write_backbone(to_timm_layout(sd, model), dst, model, source=str(checkpoint))
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(dst), prefix="backbone.")
        student = {"timm_model": model, "source": str(checkpoint)}
    elif not resume:
        raise UserError("give --checkpoint (a distilled student), --random-init or --resume")
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one parse per node; torchrun ends the others on failure
        check_config_annotations(cfg, ("train", "val"), config)
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    elif amp is False:
        drop_amp(cfg)
    cfg.resume = bool(resume)
    add_vanillakd_hooks(cfg, Path(cfg.work_dir) / "results.json", student)
    return cfg


def _check_devices(cfg, config: str | Path, launcher: str, amp: bool | None) -> None:
    """Without a GPU, a config's GPU-only parts end the run here in one line that says what to pass instead."""
    import torch
    if torch.cuda.is_available():
        return
    if amp:
        raise UserError("--amp needs a GPU (mmengine's AmpOptimWrapper is CUDA-only)")
    parts = gpu_only_parts(cfg, distributed=launcher != "none", amp=amp)
    if parts:
        raise UserError(f"{config} needs a GPU and none is visible: " + "; ".join(parts))


def add_vanillakd_hooks(cfg, results_file: str | Path | None = None, student: dict | None = None) -> None:
    """Atomic checkpoint writes, weights_only-safe checkpoints, a stop after the iteration under way on SIGTERM or
    SIGINT, and (optionally) results.json.

    ``student`` (``{'timm_model', 'source'}``) goes into results.json's ``run`` for tools/summarize.py.

    The modules that register them go into ``custom_imports`` too, so the config mmengine saves in the work
    dir reopens under mmdet's own tools.
    """
    from . import atomic_backend, hooks  # noqa: F401  (register the backend and the hooks)
    imports = dict(cfg.get("custom_imports") or {})
    names = list(imports.get("imports", []))
    names = [names] if isinstance(names, str) else names
    cfg.custom_imports = dict(imports, imports=names + [m for m in MM_IMPORTS if m not in names],
                              allow_failed_imports=imports.get("allow_failed_imports", False))
    ckpt_hook = cfg.default_hooks.get("checkpoint")
    if ckpt_hook is not None and not ckpt_hook.get("backend_args"):
        ckpt_hook.backend_args = dict(backend="atomic_local")
    ours = ("SafeCheckpointHook", "ResultsJsonHook", "StopOnSignalHook")
    custom = [h for h in cfg.get("custom_hooks", []) if h.get("type") not in ours]
    custom += [dict(type="SafeCheckpointHook"), dict(type="StopOnSignalHook")]
    if results_file is not None:
        hook = dict(type="ResultsJsonHook", out_file=str(results_file))
        if student is not None:
            hook["student"] = dict(student)
        custom.append(hook)
    cfg.custom_hooks = custom


def check_detector_checkpoint(path: str | Path) -> None:
    """Refuse a missing detector checkpoint, or one that needs unsafe unpickling, in one line."""
    from common.io import load_checkpoint
    load_checkpoint(path)


def fine_tune(cfg) -> dict:
    """Train with the mmengine Runner; results.json is written by ResultsJsonHook after each evaluation.

    A full disk ends in one line naming the file and mmengine's last checkpoint (intact: written through the atomic
    backend); SIGTERM/SIGINT stop after the iteration under way (StopOnSignalHook)."""
    from mmengine.runner import Runner

    from .hooks import last_checkpoint_line
    runner = Runner.from_cfg(cfg)
    try:
        runner.train()
        path = Path(cfg.work_dir) / "results.json"
        if not path.is_file():  # the schedule ended without an evaluation: run one now
            runner.val()
    except Exception as e:  # noqa: BLE001  only a full disk is turned into its line here
        full = None if isinstance(e, UserError) and not isinstance(e, DiskFull) else as_disk_full(e, cfg.work_dir)
        if full is None:
            raise
        raise full.explain(intact=last_checkpoint_line(cfg.work_dir)) from None
    finally:
        for hook in runner.hooks:
            if hasattr(hook, "uninstall"):  # StopOnSignalHook's signal handlers
                hook.uninstall()
    if not path.is_file():  # mmdet's CocoMetric on plain pycocotools returns nothing for an empty prediction set
        raise UserError(f"the evaluation gave no metrics, so {path} was not written: no prediction cleared the "
                        "test score threshold (model.test_cfg.rcnn.score_thr) on any val image")
    return json.loads(path.read_text())


def local_rank_is_zero() -> bool:
    """The first process of this node (torchrun's LOCAL_RANK, or Slurm's SLURM_LOCALID before mmengine reads it)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))) == 0
