"""The paper's paths as the command lines a user types, each changed only in iterations, batch size, workers and
data paths (the profile says which), grouped into paths that pass or fail as one.

Paths: distillation with the A1/A2/A3 recipes (resnet50; A2 also vit_small/tiny_patch16_224 and convnextv2_tiny) from
the BEiT v2-B teacher; KD/DKD/DIST from one teacher forward; a teacher-cache record and its replay; a run killed
after its first epoch and resumed; validation of the students (tools/validate.py, when the checkout has it);
tools/convert.py --verify; each detection config trained from the converted student, checkpointed, resumed,
validated with its CocoMetric, tested with tools/test.py and with mmdet's own packaged tools/test.py (the ViT
configs, iteration-based, are killed after their first checkpoint the same way); ONNX export of the R50 and
ConvNeXt-V2-T backbones at 224 and at a detection size, and of the ViT-S/T detection pyramids at a detection
size with dynamic H/W, verified in onnxruntime.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.io import load_yaml_mapping
from study.spec import Job

from .profiles import Profile

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"a1": "configs/distill/a1.yaml", "a2": "configs/distill/a2.yaml", "a3": "configs/distill/a3.yaml"}
TEACHER = "beitv2_base_patch16_224"
PAPER_GPUS = 8  # the paper's machines: 8 GPUs (ImageNet 8 x 256 = 2048; COCO 8 x 4 or 8 x 2)


DISTILL_PROGRESS = "progress.jsonl"  # distill.outputs.PROGRESS_FILE (not imported: --list stays torch-free)


@dataclass
class Step:
    """One command of a path and what it must show beyond exit status 0."""

    name: str
    job: Job
    timing: str | None = None  # "distill" or "mmengine": ``metrics`` gives seconds per iteration
    kill_when: Path | None = None  # kill the process group once this file exists (a preemption)
    must_exist: list[Path] = field(default_factory=list)
    must_say: tuple[str, ...] = ()  # its log must hold one of these
    env: dict[str, str] = field(default_factory=dict)
    # where the timed command writes its figures: distill's progress.jsonl, or mmengine's work dir (its runs'
    # vis_data/scalars.json)
    metrics: Path | None = None


@dataclass
class RPath:
    """A path of the paper: its commands, the paths whose outputs it reads, and its full schedule."""

    id: str
    group: str  # distill | validate | convert | detection | export
    title: str
    steps: list[Step] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    full: dict[str, Any] | None = None  # epochs, images, batch (per process), nproc, global_batch, source
    swaps: list[str] = field(default_factory=list)  # what the profile changed beyond iterations/batch/workers/data
    clean: list[Path] = field(default_factory=list)  # outputs of an earlier rehearsal, removed before it runs
    error: str = ""  # the path could not be set up (e.g. an unreadable config): reported failed, not run


@dataclass
class Plan:
    """Where a rehearsal reads and writes."""

    out: Path  # work_dirs/rehearse
    imagenet: Path  # ImageNet-layout folder the distillation reads (stand-in or view)
    imagenet_images: int  # train images of the full dataset, for projections
    coco: dict[int, Path]  # train images of an epoch -> COCO-layout folder (stand-in view or view of user data)
    coco_images: int
    teacher: Path
    configs: list[Path]
    imagenet_dataset: str = ""  # --dataset of a parquet or shard ImageNet (docs/data.md); "" for folders and tars

    def imagenet_flags(self, split_flag: str = "--val-split") -> list[str]:
        """The container flags of every command reading ImageNet: --dataset and the hub's val split name."""
        return ["--dataset", self.imagenet_dataset, split_flag, "validation"] if self.imagenet_dataset else []


def _distill_job(pid: str, recipe: str, extra: list[str], profile: Profile, plan: Plan, epochs: int = 1,
                 teacher: bool = True) -> Job:
    args = ["-c", RECIPES[recipe], "--data-dir", str(plan.imagenet), *plan.imagenet_flags()] + extra
    if teacher:
        args += ["--teacher-checkpoint", str(plan.teacher)]
    args += ["--output", str(plan.out / "distill"), "--epochs", str(epochs),
             "--limit-train-batches", str(profile.distill_steps), "--workers", str(profile.workers),
             "--progress", "log", "--log-interval", "1"]
    if profile.distill_batch:
        args += ["--batch-size", str(profile.distill_batch)]
    return Job(pid, "distill", "tools/distill.py", args, [], distributed=True)


def _recipe_full(recipe: str, profile: Profile, plan: Plan) -> dict:
    r = load_yaml_mapping(ROOT / RECIPES[recipe], "recipe")
    batch = profile.distill_batch or int(r["batch_size"])
    return {"epochs": int(r["epochs"]), "images": plan.imagenet_images, "batch": batch, "nproc": profile.nproc,
            "global_batch": int(r["batch_size"]) * PAPER_GPUS, "source": RECIPES[recipe]}


def distill_paths(profile: Profile, plan: Plan) -> list[RPath]:
    out = plan.out / "distill"
    paths = []
    students = [("a1", "resnet50"), ("a2", "resnet50"), ("a3", "resnet50"), ("a2", "vit_small_patch16_224"),
                ("a2", "vit_tiny_patch16_224"), ("a2", "convnextv2_tiny")]
    for recipe, model in students:
        pid = f"distill-{recipe}-{model}"
        exp = f"{recipe}-{model}"
        job = _distill_job(pid, recipe, ["--model", model, "--experiment", exp], profile, plan)
        paths.append(RPath(pid, "distill", f"{recipe.upper()} {model} from {TEACHER}",
                           [Step("train", job, "distill", must_exist=[out / exp / "student.pth"],
                                 metrics=out / exp / DISTILL_PROGRESS)],
                           full=_recipe_full(recipe, profile, plan), clean=[out / exp]))
    exp = "a2-resnet50-kd-dkd-dist"
    job = _distill_job("distill-a2-kd-dkd-dist", "a2", ["--model", "resnet50", "--kd-loss", "kd", "dkd", "dist",
                                                         "--experiment", exp], profile, plan)
    paths.append(RPath("distill-a2-kd-dkd-dist", "distill", "A2 resnet50: KD, DKD and DIST from one teacher forward",
                       [Step("train", job, "distill", must_exist=[out / exp / f"resnet50-{m}" / "student.pth"
                                                                  for m in ("kd", "dkd", "dist")],
                             metrics=out / exp / DISTILL_PROGRESS)],
                       full=_recipe_full("a2", profile, plan), clean=[out / exp]))
    if plan.imagenet_dataset.startswith("wds/"):  # shards have no stable sample index: no teacher cache
        return paths + _resume_path(profile, plan)
    cache = plan.out / "teacher_cache" / "a2"
    rec = _distill_job("distill-a2-record", "a2", ["--model", "resnet50", "--mixup-mode", "sample",
                                                   "--record-teacher", str(cache), "--experiment", "a2-record"],
                       profile, plan)
    paths.append(RPath("distill-a2-record", "distill", "A2 resnet50 recording the teacher (--record-teacher)",
                       [Step("train", rec, "distill", must_exist=[cache / "meta.json"],
                             metrics=out / "a2-record" / DISTILL_PROGRESS)],
                       full=_recipe_full("a2", profile, plan), clean=[out / "a2-record", cache]))
    rep = _distill_job("distill-a2-replay", "a2", ["--model", "resnet50", "--mixup-mode", "sample",
                                                   "--teacher-cache", str(cache), "--experiment", "a2-replay"],
                       profile, plan, teacher=False)
    paths.append(RPath("distill-a2-replay", "distill", "A2 resnet50 from the recorded cache (--teacher-cache)",
                       [Step("train", rep, "distill", must_exist=[out / "a2-replay" / "student.pth"],
                             metrics=out / "a2-replay" / DISTILL_PROGRESS)],
                       needs=["distill-a2-record"], full=_recipe_full("a2", profile, plan),
                       clean=[out / "a2-replay"]))
    return paths + _resume_path(profile, plan)


def _resume_path(profile: Profile, plan: Plan) -> list[RPath]:
    out = plan.out / "distill"
    exp = "a2-resnet50-resume"
    first = _distill_job("distill-a2-kill-resume", "a2", ["--model", "resnet50", "--experiment", exp], profile, plan,
                         epochs=2)
    again = Job(first.id, first.kind, first.tool, first.args + ["--resume"], [], distributed=True)
    return [RPath("distill-a2-kill-resume", "distill", "A2 resnet50 killed after epoch 1, then --resume",
                  [Step("killed", first, "distill", kill_when=out / exp / "last.pth",
                        metrics=out / exp / DISTILL_PROGRESS),
                   Step("resume", again, "distill", must_exist=[out / exp / "summary.json"],
                        must_say=("resumed from",), metrics=out / exp / DISTILL_PROGRESS)],
                  full=_recipe_full("a2", profile, plan), clean=[out / exp])]


def student_of(model: str) -> tuple[str, Path]:
    """(distillation path id, student file) of the A2 student of ``model``."""
    return f"distill-a2-{model}", Path("distill") / f"a2-{model}" / "student.pth"


def check_paths(profile: Profile, plan: Plan) -> list[RPath]:
    paths = []
    models = ["resnet50", "vit_small_patch16_224", "convnextv2_tiny"]
    for model in models:
        need, student = student_of(model)
        res = plan.out / "validate" / f"{model}.json"
        # the run's hub folder next to student.pth: its config.json carries the run's eval transform (the
        # recipe's size and crop), where a bare student.pth would get timm's defaults for the architecture
        hub = plan.out / student.parent / "timm"
        job = Job(f"validate-{model}", "validate", "tools/validate.py",
                  ["--data-dir", str(plan.imagenet), *(plan.imagenet_flags("--split") or ["--split", "val"]),
                   "--model", f"local-dir:{hub}",
                   "--batch-size", str(profile.distill_batch or 256), "--workers", str(profile.workers),
                   "--results-file", str(res)], [])
        paths.append(RPath(f"validate-{model}", "validate", f"tools/validate.py on the A2 {model} student's "
                           "hub folder",
                           [Step("validate", job, must_exist=[res])], needs=[need], clean=[res]))
    for model in ("resnet50", "convnextv2_tiny", "vit_small_patch16_224", "vit_tiny_patch16_224"):
        need, student = student_of(model)
        dst = plan.out / "convert" / f"{model}-backbone.pth"
        job = Job(f"convert-{model}", "convert", "tools/convert.py",
                  [str(plan.out / student), str(dst), "--model", model, "--verify"], [])
        paths.append(RPath(f"convert-{model}", "convert", f"tools/convert.py --verify of the A2 {model} student",
                           [Step("convert", job, must_exist=[dst], must_say=("verified:",))], needs=[need],
                           clean=[dst]))
    return paths


def export_paths(profile: Profile, plan: Plan) -> list[RPath]:
    paths = []
    for model in ("resnet50", "convnextv2_tiny"):
        need, student = student_of(model)
        for size, dynamic in ((224, False), (profile.onnx_det_size, True)):
            pid = f"onnx-{model}-{size}"
            onnx = plan.out / "onnx" / f"{model}-backbone-{size}.onnx"
            args = [str(plan.out / student), "--model", model, "--task", "backbone", "--out", str(onnx),
                    "--img-size", str(size), "--verify"] + (["--dynamic-size"] if dynamic else [])
            what = f"{size}x{size}" + (" (dynamic H/W, verified at that size and +32)" if dynamic else "")
            paths.append(RPath(pid, "export", f"ONNX backbone of the A2 {model} student at {what}",
                               [Step("export", Job(pid, "export", "tools/export_onnx.py", args, []),
                                     must_exist=[onnx], must_say=("max abs diff",))], needs=[need], clean=[onnx]))
    for model in ("vit_small_patch16_224", "vit_tiny_patch16_224"):  # ViTDet's pyramid, height and width dynamic
        need, student = student_of(model)
        h, w = profile.onnx_det_size, profile.onnx_det_size * 5 // 4
        pid = f"onnx-{model}-pyramid-{h}x{w}"
        onnx = plan.out / "onnx" / f"{model}-pyramid-{h}x{w}.onnx"
        args = [str(plan.out / student), "--model", model, "--task", "backbone", "--out", str(onnx),
                "--img-size", str(h), str(w), "--verify"]
        paths.append(RPath(pid, "export", f"ONNX detection pyramid (ViTDet) of the A2 {model} student at {h}x{w}, "
                           "dynamic H/W verified at a second size",
                           [Step("export", Job(pid, "export", "tools/export_onnx.py", args, []),
                                 must_exist=[onnx], must_say=("max abs diff",))], needs=[need], clean=[onnx]))
    return paths


def mmdet_test_tool() -> str:
    """mmdet's own packaged tools/test.py (what `mim test mmdet` runs)."""
    import mmdet
    return str(Path(mmdet.__file__).parent / ".mim" / "tools" / "test.py")


@functools.lru_cache(maxsize=None)
def _config_facts(config: Path) -> dict:
    """What a path needs to know of a config: its student, schedule, batch, and the parts that need a GPU."""
    from transfer.devices import sync_bn_keys, uses_amp
    from transfer.finetune import load_config
    cfg = load_config(config)
    bb = cfg.model.backbone
    family = str(bb.get("type", "")).split(".")[-1]
    # anything else: transfer.py says why not
    student = {"ConvNeXt": "convnextv2_tiny", "TimmViTDet": bb.get("model")}.get(family, "resnet50")
    batch = int(cfg.train_dataloader.batch_size)
    total = int((cfg.get("auto_scale_lr") or {}).get("base_batch_size", batch * PAPER_GPUS))
    by_iter = cfg.train_cfg.get("type") == "IterBasedTrainLoop"  # ViTDet's schedules count iterations
    return {"student": student, "batch": batch, "total_batch": total, "amp": uses_amp(cfg),
            "sync_bn": sync_bn_keys(cfg), "by_iter": by_iter,
            "length": int(cfg.train_cfg.max_iters if by_iter else cfg.train_cfg.max_epochs)}


def detection_path(config: Path, profile: Profile, plan: Plan) -> RPath:
    """Train from the converted student, killed after the first epoch's checkpoint, resumed, validated with the
    config's CocoMetric, tested with tools/test.py and with mmdet's own tools/test.py."""
    pid = f"det-{config.stem}"
    wd = plan.out / "detection" / config.stem
    try:
        facts = _config_facts(config)
    except Exception as e:  # noqa: BLE001  (a config that does not even load is this path's failure)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return RPath(pid, "detection", f"{config}", error=f"config does not load: {first[:200]}", clean=[wd])
    need, student = student_of(facts["student"])
    batch = profile.det_batch or facts["batch"]
    images = batch * profile.nproc * profile.det_iters
    coco = plan.coco[images]
    def workers(split: str) -> list[str]:
        return [f"{split}_dataloader.num_workers={profile.workers}"] + (
            [f"{split}_dataloader.persistent_workers=False"] if profile.workers == 0 else [])

    common = workers("train") + workers("val") + workers("test") + ["default_hooks.logger.interval=1",
                                                                    "log_processor.window_size=1"]
    if profile.det_batch:
        common.append(f"train_dataloader.batch_size={batch}")
    swaps, flags = [], []
    if profile.swap_gpu_only:
        if facts["amp"]:
            flags.append("--no-amp")
            swaps.append("AmpOptimWrapper -> OptimWrapper (--no-amp)")
        if facts["sync_bn"]:
            common += [f"{k}=BN" for k in facts["sync_bn"]]
            swaps.append(f"SyncBN -> BN ({len(facts['sync_bn'])} norm_cfg)")
    data = ["--data-root", str(coco), "--work-dir", str(wd)]
    # the user's command for a 2-epoch run, preempted once its epoch-1 checkpoint is written (mmengine writes
    # last_checkpoint after the .pth), then the same command with --resume: epoch 2, its CocoMetric validation.
    # An iteration-based config (ViTDet's) runs 2 x det_iters iterations, checkpointed and killed at det_iters.
    if facts["by_iter"]:
        n = profile.det_iters
        length = [f"train_cfg.max_iters={2 * n}", f"train_cfg.val_interval={2 * n}",
                  f"default_hooks.checkpoint.interval={n}"]
        first, ckpt, resumed = wd / f"iter_{n}.pth", wd / f"iter_{2 * n}.pth", f"resumed epoch: 0, iter: {n}"
    else:
        length = ["train_cfg.max_epochs=2"]
        first, ckpt, resumed = wd / "epoch_1.pth", wd / "epoch_2.pth", "resumed epoch: 1"
    train = Job(pid, "transfer", "tools/transfer.py",
                [str(config), "--checkpoint", str(plan.out / student)] + data + flags
                + ["--cfg-options"] + length + common, [], distributed=True)
    resume = Job(pid, "transfer", "tools/transfer.py", train.args[:3] + ["--resume"] + train.args[3:], [],
                 distributed=True)
    test = Job(pid, "test", "tools/test.py",
               [str(config), str(ckpt), "--data-root", str(coco), "--out", str(wd / "test.json"), "--work-dir",
                str(wd / "test"), "--cfg-options"] + workers("test"), [], distributed=True)
    mm = Job(pid, "test", mmdet_test_tool(), [str(wd / config.name), str(ckpt), "--work-dir", str(wd / "mmdet_test")],
             [], distributed=True)
    env = {"PYTHONPATH": str(ROOT)}  # mmdet's tool imports our hooks through the saved config's custom_imports
    steps = [Step("train", train, "mmengine", kill_when=wd / "last_checkpoint", must_exist=[first], metrics=wd),
             Step("resume", resume, "mmengine", must_exist=[ckpt, wd / "results.json"], must_say=(resumed,),
                  metrics=wd),
             Step("test", test, must_exist=[wd / "test.json"]),
             # mmdet's CocoMetric on plain pycocotools prints no numbers when no box clears the score threshold
             # (a detector trained a few iterations): the test loop ran to its end either way
             Step("mmdet-test", mm, must_say=("coco/bbox_mAP", "The testing results of the whole dataset is empty"),
                  env=env)]
    epochs = (round(facts["length"] * facts["total_batch"] / plan.coco_images, 2) if facts["by_iter"]
              else facts["length"])
    full = {"epochs": epochs, "images": plan.coco_images, "batch": batch, "nproc": profile.nproc,
            "global_batch": facts["total_batch"], "source": str(config)}
    return RPath(pid, "detection", f"{config.name}: train, killed after the first checkpoint, --resume, "
                 "CocoMetric, tools/test.py, mmdet's tools/test.py", steps, needs=[need], full=full, swaps=swaps, clean=[wd])


def detection_images(configs: list[Path], profile: Profile) -> set[int]:
    """Train-set sizes the detection paths need (batch x processes x iterations per epoch)."""
    sizes = set()
    for c in configs:
        try:
            batch = profile.det_batch or _config_facts(c)["batch"]
        except Exception:  # noqa: BLE001  (reported by detection_path)
            batch = profile.det_batch or 1
        sizes.add(batch * profile.nproc * profile.det_iters)
    return sizes


def build(profile: Profile, plan: Plan) -> list[RPath]:
    return (distill_paths(profile, plan) + check_paths(profile, plan)
            + [detection_path(c, profile, plan) for c in plan.configs] + export_paths(profile, plan))


def select(paths: list[RPath], only: list[str] | None) -> list[RPath]:
    """Paths whose id contains one of ``only`` (all when empty), with the paths they read from."""
    if not only:
        return paths
    by_id = {p.id: p for p in paths}
    keep: set[str] = set()
    todo = [p.id for p in paths if any(o in p.id for o in only)]
    while todo:
        pid = todo.pop()
        if pid not in keep:
            keep.add(pid)
            todo += by_id[pid].needs
    return [p for p in paths if p.id in keep]
