"""The training loader on each container, against the folder: the same JPEG bytes, the same A2 augmentation.

bench/jpegs.py's 768 ImageNet-size JPEGs (500x375, quality 90) are written once more as a tar (per-class tars, as
ImageNet's train tar), the hub's parquet layout and WebDataset shards (shapes/containers.py: byte for byte), and
our training loader (``distill.data.build_train_loader``: the A2 recipe's crop, flip, RandAugment and random
interpolation, no mixup, batch 32, 2 workers, persistent) reads one epoch per call from each, the four interleaved
in rotated rounds (bench/timing.py).

- ``{tar,parquet,wds}_loader_over_folder``: seconds per image on that container / on the folder, per round
  (target 1.05: a container may cost at most 5 % over the folder, or docs/data.md says why);
- ``images_per_s_per_worker_{folder,tar,parquet,wds}``: the loaders' throughput here, per worker;
- ``open_seconds_{kind}``: opening the split (timm's tar index scan, the datasets library's load from its Arrow
  cache, the check of every shard count against ``_info.json``), median of 3; ``wds_check_seconds_per_1k_samples``
  projects the shard check to ImageNet's size.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("folder", "tar", "parquet", "wds")


def write(images: int) -> dict[str, tuple[Path, str]]:
    """{kind: (--data-dir, --dataset)} of the bench JPEGs in each container (written once, then reused)."""
    from bench.jpegs import write_jpeg_folder
    from shapes.containers import write_containers
    jpegs = write_jpeg_folder(ROOT / "work_dirs" / "bench" / "jpegs", num_images=images)
    out = ROOT / "work_dirs" / "bench" / "containers"
    made = write_containers(jpegs, out, ["tar", "parquet", "wds"], name="bench", tag=f"{images}", per_shard=64)
    return {"folder": (jpegs, ""), "tar": (made["tar"], ""),
            "parquet": (out / "hf_cache", f"hfds/{made['parquet']}"), "wds": (made["wds"], "wds/bench")}


def bench_containers(repeats: int, images: int = 768, workers: int = 2, batch: int = 32) -> dict:
    import timm
    import torch
    from bench.loader import loader_args, per_image_ratio
    from bench.timing import interleaved_rounds, medians, with_spread
    from distill.containers import check_shards, open_split
    from distill.data import build_train_loader
    where = write(images)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("resnet50", pretrained=False))
    loaders, opened = {}, {}
    for kind, (data_dir, dataset) in where.items():
        args = loader_args(data_dir, workers, batch, mixup=False)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            split = open_split(data_dir, "train", dataset)
            times.append(time.perf_counter() - t0)
        opened[kind] = statistics.median(times)
        cfg.update(input_size=(3, args.img_size, args.img_size), crop_pct=args.crop_pct,
                   interpolation=args.interpolation)
        loaders[kind] = build_train_loader(split, args, cfg, torch.device("cpu"), rank=0, world_size=1,
                                           num_classes=len(split.class_to_idx))
    t0 = time.perf_counter()
    check_shards(where["wds"][0], "train")
    wds_check_per_1k = (time.perf_counter() - t0) / images * 1000
    seen = {k: 0 for k in loaders}
    epochs = {k: 0 for k in loaders}

    def epoch(kind: str) -> None:
        loaders[kind].sampler.set_epoch(epochs[kind])
        epochs[kind] += 1
        seen[kind] = sum(len(b[0]) for b in loaders[kind])

    rounds = interleaved_rounds({k: (lambda k=k: epoch(k)) for k in loaders}, max(repeats, 15), warmup=1)
    t = medians(rounds)
    spread = {f"{k}_loader_over_folder": per_image_ratio(rounds, seen, k, "folder") for k in KINDS[1:]}
    return {**with_spread(spread),
            **{f"images_per_s_per_worker_{k}": seen[k] / t[k] / workers for k in KINDS},
            **{f"open_seconds_{k}": opened[k] for k in KINDS},
            "wds_check_seconds_per_1k_samples": wds_check_per_1k,
            "_seconds_per_epoch": t, "_images_per_epoch": seen, "_workers": workers, "_batch": batch,
            "_cpus": os.cpu_count()}


if __name__ == "__main__":
    import json
    import sys
    sys.path.insert(0, str(ROOT))
    print(json.dumps(bench_containers(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=2, default=str))
