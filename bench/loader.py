"""The input pipeline at ImageNet size: our replayable-view loader against timm's ``create_loader``.

Both read the same generated JPEGs (bench/jpegs.py: 500x375, quality 90) with the A2 recipe's augmentation
(configs/distill/a2.yaml: random-resized crop at 224, flip, RandAugment rand-m7-mstd0.5, bicubic/bilinear
random interpolation) and the same number of workers; a "call" is one epoch over the folder, the loaders'
workers persist between epochs (as in training) and the candidates alternate, so both see the same machine.

- ``replay_loader_over_timm``: seconds per image, ours (``distill.data.build_train_loader``) / timm's
  ``create_loader`` (CPU path: ``use_prefetcher=False``, normalisation in the workers, as ours), no mixup.
- ``sample_mixup_over_plain_loader``: ours with the recipe's mixup/cutmix in ``--mixup-mode sample`` / ours
  without mixup. timm mixes on the batch after loading; sample mode mixes in the workers' collate step.
Repeated augmentation is a sampler choice that costs nothing per image; timm's create_loader supports it only
under DDP, so both loaders run without it here.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGENET_TRAIN_IMAGES = 1_281_167
PROJECTED_WORKERS = 16


def loader_args(data_dir: Path, workers: int, batch: int, mixup: bool):
    from distill.args import parse_args
    argv = ["-c", str(ROOT / "configs/distill/a2.yaml"), "--data-dir", str(data_dir), "--model", "resnet50",
            "--batch-size", str(batch), "--workers", str(workers), "--aug-repeats", "0"]
    if mixup:
        argv += ["--mixup-mode", "sample"]
    else:
        argv += ["--mixup", "0", "--cutmix", "0"]
    return parse_args(argv)


def build_loaders(data_dir: Path, workers: int, batch: int) -> dict:
    import timm
    import torch
    from timm.data import create_dataset, create_loader
    from distill.data import build_dataset, build_train_loader
    a2 = loader_args(data_dir, workers, batch, mixup=False)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("resnet50", pretrained=False))
    cfg.update(input_size=(3, a2.img_size, a2.img_size), crop_pct=a2.crop_pct, interpolation=a2.interpolation)
    cpu = torch.device("cpu")
    loaders = {}
    for name, mixup in (("replay", False), ("replay_sample_mixup", True)):
        args = loader_args(data_dir, workers, batch, mixup)
        ds = build_dataset(data_dir, "train", is_training=True)
        loaders[name] = build_train_loader(ds, args, cfg, cpu, rank=0, world_size=1, num_classes=len(ds.class_to_idx))
    timm_ds = create_dataset("", root=str(data_dir / "train"), split="", is_training=True)
    loaders["timm"] = create_loader(
        timm_ds, cfg["input_size"], batch, is_training=True, use_prefetcher=False, no_aug=a2.no_aug,
        re_prob=a2.reprob, re_mode=a2.remode, re_count=a2.recount, scale=tuple(a2.scale), ratio=tuple(a2.ratio),
        hflip=a2.hflip, color_jitter=a2.color_jitter, auto_augment=a2.aa, interpolation="random",
        mean=cfg["mean"], std=cfg["std"], num_workers=workers, persistent_workers=True, pin_memory=False)
    return loaders


def per_image_ratio(rounds: dict[str, list[float]], seen: dict[str, int], num: str, den: str) -> dict:
    """Per-round ratio of seconds per image (an epoch's images may differ between loaders: drop_last)."""
    from bench.timing import ratio_spread
    return ratio_spread(rounds, num, den, num_scale=1 / seen[num], den_scale=1 / seen[den])


def bench_loader(repeats: int, images: int = 768, workers: int = 2, batch: int = 32) -> dict:
    from bench.timing import interleaved_rounds, medians, with_spread
    from bench.jpegs import write_jpeg_folder
    data_dir = write_jpeg_folder(ROOT / "work_dirs" / "bench" / "jpegs", num_images=images)
    loaders = build_loaders(data_dir, workers, batch)
    seen = {k: 0 for k in loaders}
    epochs = {k: 0 for k in loaders}

    def epoch(name):
        loader = loaders[name]
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epochs[name])
        epochs[name] += 1
        n = 0
        for batch_ in loader:
            n += len(batch_[0])
        seen[name] = n

    # an epoch varies by ~5 % here (augmentation draws, the VM's neighbours): 15+ rounds keep the ratios to ~2 %
    rounds = interleaved_rounds({k: (lambda k=k: epoch(k)) for k in loaders}, max(repeats, 15), warmup=1)
    t = medians(rounds)
    per_image = {k: t[k] / seen[k] for k in t}
    per_worker = {k: 1.0 / (per_image[k] * workers) for k in t}
    spread = {"replay_loader_over_timm": per_image_ratio(rounds, seen, "replay", "timm"),
              "sample_mixup_over_plain_loader": per_image_ratio(rounds, seen, "replay_sample_mixup", "replay")}
    out = {**with_spread(spread),
           "images_per_s_per_worker_replay": per_worker["replay"],
           "images_per_s_per_worker_sample_mixup": per_worker["replay_sample_mixup"],
           "images_per_s_per_worker_timm": per_worker["timm"],
           "imagenet_epoch_minutes_16_workers_replay":
               IMAGENET_TRAIN_IMAGES / (per_worker["replay"] * PROJECTED_WORKERS) / 60,
           "imagenet_epoch_minutes_16_workers_sample_mixup":
               IMAGENET_TRAIN_IMAGES / (per_worker["replay_sample_mixup"] * PROJECTED_WORKERS) / 60,
           "_seconds_per_epoch": t, "_images_per_epoch": seen, "_workers": workers, "_batch": batch,
           "_cpus": os.cpu_count()}
    return out


if __name__ == "__main__":
    import json
    import sys
    sys.path.insert(0, str(ROOT))
    r = bench_loader(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(json.dumps(r, indent=2))
