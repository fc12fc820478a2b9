"""Command-line flags of tools/distill.py, timm-style: a YAML recipe (-c) sets defaults, flags override.

Defaults follow the paper's official code (github.com/Hao840/vanillaKD, its losses and train commands) except where a value only makes
sense at ImageNet scale; the recipes in configs/distill/ carry the paper's full strategies A1/A2/A3.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


from common.io import UserError, load_yaml_mapping


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/distill.py",
        description="Train ImageNet-style students with vanilla KD (or DKD, DIST, BKD; hint-based CC, RKD, CRD, "
                    "ReviewKD) from a timm teacher, or from a recorded teacher cache (--teacher-cache). "
                    "Without a teacher it trains the model plainly (e.g. to make a teacher).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-c", "--config", default="", metavar="YAML", help="recipe file (configs/distill/a2.yaml ...); flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="ImageFolder root holding train/ and val/ (ImageNet layout)")
    # ---- issue 33: the containers (docs/data.md)
    g.add_argument("--dataset", default="", metavar="hfds/NAME|wds/NAME",
                   help="the container, as timm names it: none for class folders (DATA_DIR/train/) or tars "
                        "(DATA_DIR/train.tar, class folders or per-class tars, read in place); hfds/<folder or hub "
                        "name> for the hub's parquet layout (--data-dir: the datasets cache; --val-split validation); "
                        "wds/<name> for WebDataset shards with timm's _info.json in --data-dir (online KD only)")
    # ----
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--num-classes", type=int, default=None, help="default: number of class folders in train/")
    g.add_argument("--train-subset", type=float, default=1.0, metavar="FRACTION",
                   help="keep this fraction of each class of train/ (seeded), for the data-scale study")
    g.add_argument("--limit-train-batches", type=int, default=0, metavar="N",
                   help="train only the first N batches of each epoch (0: all); the lr schedule then counts N "
                        "updates per epoch. For rehearsals and smoke tests (tools/rehearse.py): every other "
                        "setting stays the recipe's")
    g.add_argument("--img-size", type=int, default=224)
    g.add_argument("--test-img-size", type=int, default=None, help="evaluation size (default: --img-size)")
    g.add_argument("--crop-pct", type=float, default=0.95)
    g.add_argument("--mean", type=float, nargs=3, default=None, help="default: the student's pretrained cfg")
    g.add_argument("--std", type=float, nargs=3, default=None)
    g.add_argument("--interpolation", default="bicubic")
    g.add_argument("--workers", "-j", type=int, default=4)
    g.add_argument("--batch-size", "-b", type=int, default=256, help="per-process batch size")
    g.add_argument("--extra-val", nargs="+", default=[], metavar="NAME=DIR",
                   help="more ImageFolders evaluated each epoch, e.g. imagenet-v2=/data/imagenetv2-matched-frequency")
    g.add_argument("--real-labels", default="", metavar="REAL_JSON",
                   help="ImageNet-ReaL labels (real.json) for the val split: adds ReaL top-1/top-5")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="replace unreadable or truncated images by the next one and count them (default: stop)")
    g.add_argument("--validation-batch-size", type=int, default=None)
    g.add_argument("--val-interval", type=int, default=1, metavar="N",
                   help="validate every N epochs (and after the last one); e.g. for many short epochs on a subset")
    g = p.add_argument_group("augmentation")
    g.add_argument("--no-aug", action="store_true", help="disable all training augmentation")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0])
    g.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0])
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--color-jitter", type=float, default=0.0)
    g.add_argument("--aa", default=None, help="RandAugment policy, e.g. rand-m7-mstd0.5")
    g.add_argument("--aug-repeats", type=int, default=0, help="repeated augmentation (3 in the paper)")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel", help="random erasing mode")
    g.add_argument("--recount", type=int, default=1, help="random erasing count")
    g.add_argument("--mixup", type=float, default=0.0)
    g.add_argument("--cutmix", type=float, default=0.0)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch", choices=["batch", "pair", "elem", "sample"],
                   help="timm's batch/pair/elem mixing of the batch (the paper's: batch), or 'sample': each sample "
                        "mixed with the other half of its pair (same batch, no second decode), lambda from "
                        "(seed, epoch, position); replayable under any world size (needed by the teacher cache; "
                        "even --batch-size)")
    g.add_argument("--smoothing", type=float, default=0.0)
    g = p.add_argument_group("models")
    g.add_argument("--model", nargs="+", default=["resnet50"], help="student timm model name(s)")
    g.add_argument("--pretrained", action="store_true", help="start students from timm pretrained weights (needs network)")
    g.add_argument("--initial-checkpoint", default="", help="start the student(s) from this state dict")
    g.add_argument("--drop", type=float, default=0.0)
    g.add_argument("--drop-path", type=float, default=0.05)
    g.add_argument("--teacher", default=None, help="teacher timm model name; omit to train without KD")
    g.add_argument("--teacher-checkpoint", default="", help="teacher weights: timm state dict or wrapped")
    g.add_argument("--teacher-pretrained", action="store_true", help="load the teacher's timm pretrained weights (needs network)")
    g.add_argument("--teacher-resize", type=int, default=None, help="resize the student's view to this size for the teacher")
    g.add_argument("--teacher-mean", type=float, nargs=3, default=None, help="default: the teacher's pretrained cfg")
    g.add_argument("--teacher-std", type=float, nargs=3, default=None)
    g.add_argument("--teacher-compile", action="store_true", help="torch.compile the teacher's forward")
    g.add_argument("--teacher-amp", default="auto", choices=["auto", "off", "bfloat16", "float16"],
                   help="teacher autocast: auto = the student's --amp, or bf16 on a GPU that has it")
    g.add_argument("--record-teacher", default="", metavar="DIR",
                   help="store the teacher's top-k logits for every sample of every epoch (see --teacher-topk)")
    g.add_argument("--teacher-topk", type=int, default=10, help="k of the recorded top-k (capped at the class count)")
    g.add_argument("--teacher-cache", default="", metavar="DIR",
                   help="train from a --record-teacher directory instead of a teacher: no teacher forward")
    g = p.add_argument_group("losses")
    g.add_argument("--kd-loss", nargs="+", default=["kd"],
                   help="KD method(s): kd bkd dkd dist lskd (logits); cc rkd crd review (features); none (hard label only: "
                        "the from-scratch baseline on the same batches)")
    g.add_argument("--kd-hparams", nargs="+", default=[], metavar="[LOSS.]NAME=VALUE",
                   help="hyper-parameters of the KD loss(es) beyond the flags above, e.g. crd.num_negatives=4096 "
                        "review.warmup_epochs=1 (unscoped names go to every loss of the run)")
    g.add_argument("--kd-loss-weight", type=float, nargs="+", default=[1.0], help="one per setting, or one for all")
    g.add_argument("--ori-loss-weight", type=float, nargs="+", default=[1.0], help="hard-label loss weight(s); 0 drops the hard label")
    g.add_argument("--temperature", type=float, default=1.0, help="KD/DKD/DIST temperature")
    g.add_argument("--dkd-alpha", type=float, default=1.0)
    g.add_argument("--dkd-beta", type=float, default=2.0)
    g.add_argument("--dist-beta", type=float, default=1.0)
    g.add_argument("--dist-gamma", type=float, default=1.0)
    g.add_argument("--bce-loss", action=argparse.BooleanOptionalAction, default=False,
                   help="timm's BinaryCrossEntropy as hard-label loss (--no-bce-loss: CE, e.g. over a recipe)")
    g.add_argument("--bce-target-thresh", type=float, default=None)
    g = p.add_argument_group("optimization")
    g.add_argument("--opt", default="lamb")
    g.add_argument("--lr", type=float, default=5e-3)
    g.add_argument("--weight-decay", type=float, default=0.02)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--clip-mode", default="norm")
    g.add_argument("--sched", default="cosine")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270])
    g.add_argument("--decay-rate", type=float, default=0.1)
    g.add_argument("--model-ema", action="store_true")
    g.add_argument("--model-ema-decay", type=float, nargs="+", default=[0.9998])
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU)")
    g.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--output", default="output")
    g.add_argument("--experiment", default="", help="run folder name (default: a name built from the settings)")
    g.add_argument("--save-interval", type=int, default=1, metavar="N",
                   help="write last.pth and student.pth every N epochs (and after the last one)")
    g.add_argument("--resume", nargs="?", const="auto", default="",
                   help="continue from <output>/<experiment>/last.pth (or from the path given)")
    g.add_argument("--log-interval", type=int, default=50)
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip the update of a step whose loss is NaN/inf and go on (default: stop the run)")
    g.add_argument("--unsafe-load", action="store_true",
                   help="allow checkpoints that are full pickles (can run code): only for files you trust")
    g.add_argument("--progress", choices=["auto", "bar", "log"], default="auto",
                   help="progress bars on a terminal, plain log lines otherwise")
    g.add_argument("--dist-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="under torchrun: a rank whose process stops answering for this long counts as lost, and the "
                        "others end the run naming it (a rank that died is named at once)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags with the YAML recipe's values as defaults (timm's train.py convention)."""
    parser = build_parser()
    cfg_parser = argparse.ArgumentParser(add_help=False)
    cfg_parser.add_argument("-c", "--config", default="")
    pre, _ = cfg_parser.parse_known_args(argv)
    recipe: dict[str, Any] = {}
    if pre.config:
        recipe = load_recipe(pre.config, parser)
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    if args.teacher_cache and recipe.get("teacher") and "teacher" not in given_flags(argv):
        # the recipes name the paper's teacher for online KD; a cache names its own teacher and replaces it
        args.teacher = None
    if args.data_dir is None:
        parser.error("--data-dir is required (an ImageFolder root holding train/ and val/)")
    if args.limit_train_batches < 0:
        parser.error("--limit-train-batches must be 0 (all batches) or more")
    if args.dist_timeout < 5:
        parser.error("--dist-timeout must be at least 5 seconds (ranks say they are alive every 2 s)")
    return args


def given_flags(argv: list[str] | None = None) -> set[str]:
    """The dests set on the command line itself (not by defaults or the recipe)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(argv)
    return set(vars(ns))


def load_recipe(path: str | Path, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Read a YAML recipe (parsed, never evaluated); keys are flag names with '_' or '-'."""
    path = Path(path)
    cfg = load_yaml_mapping(path, "recipe", " of flag names to values")
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    if parser is not None:
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UserError(f"recipe {path} has unknown keys: {', '.join(unknown)}")
    return cfg
