"""The rehearsal on ImageNet held as tars, the hub's parquet layout or WebDataset shards (docs/data.md).

Why: the paper's paths must be tried on the container the real runs will read. As for class folders, the user's
container is checked first (both splits opened through timm's reader, the shard counts checked, one image of every
class decoded, the A2 training view timed on it), then every command reads a small view of it: a few images of
every class, copied out of the container (its own bytes) and written back as the same kind of container. Without
user data, the stand-in's class folders are written as the chosen container (``--container``).
"""
from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

from PIL import Image

from common.io import UserError


def located(kind: str, made: Path, out: Path, name: str = "imagenet") -> tuple[Path, str]:
    """(--data-dir, --dataset) of a container written by shapes.containers.write_containers."""
    if kind == "parquet":
        return out / "hf_cache", f"hfds/{made}"
    if kind == "wds":
        return made, f"wds/{name}"
    return made, ""


def standin(folder: Path, out: Path, kind: str, readers: int) -> tuple[Path, str]:
    """The stand-in's class folders (``folder/{train,val}``) as ``kind``: at least 2 shards per reader for shards."""
    from shapes.containers import write_containers
    n = sum(1 for _ in (folder / "train").rglob("*.JPEG"))
    made = write_containers(folder, out, [kind], name="imagenet", tag=str(n),
                            per_shard=max(1, n // max(2, 2 * readers)))[kind]
    return located(kind, made, out)


def _classes_and_firsts(split) -> tuple[int, list[int]]:
    """Number of classes and the index of each class's first sample (map-style splits)."""
    first: dict[int, int] = {}
    for i, (_, t) in enumerate(split.samples):
        first.setdefault(t, i)
    return len(first), [first[t] for t in sorted(first)]


def _stream_items(split, limit: int | None = None):
    """(encoded bytes, target, file name) of a shard split in shard order, each sample once, as stored."""
    import webdataset as wds
    urls = [str(Path(split.prefix) / f) for f in split.shards]
    for k, sample in enumerate(wds.WebDataset(urls, shardshuffle=False, empty_check=False)):
        if limit is not None and k >= limit:
            return
        ext = next((e for e in ("jpg", "png", "webp") if e in sample), None)
        if ext is None:
            raise UserError(f"{split.where}: sample {sample.get('__key__')} has no jpg, png or webp image")
        yield sample[ext], int(sample["cls"]), f"{sample['__key__']}.{ext}"


def preflight(data_dir: str | Path, dataset: str, recipe: str | Path, sample: int = 16) -> dict:
    """Both splits opened (counts checked for shards), one image of every class decoded (map-style; the first
    ``sample`` for shards), then the recipe's training view timed on ``sample`` images in this process."""
    from distill.containers import open_split
    t0 = time.time()
    out: dict[str, Any] = {"root": str(data_dir), "dataset": dataset}
    splits = {}
    for split in ("train", "validation" if dataset else "val"):
        s = open_split(data_dir, split, dataset)
        splits[split] = s
        bad = []
        if s.streams:
            classes, decoded = len(s.class_to_idx) or None, 0
            for data, _, name in _stream_items(s, sample):
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                except (OSError, SyntaxError, ValueError) as e:
                    bad.append(f"{name} ({type(e).__name__})")
                decoded += 1
        else:
            classes, firsts = _classes_and_firsts(s)
            decoded = len(firsts)
            for i in firsts:
                try:
                    with s.open(i) as f, Image.open(f) as im:
                        im.load()
                except (OSError, SyntaxError, ValueError) as e:
                    bad.append(f"{s.samples[i][0]} ({type(e).__name__})")
        if bad:
            raise UserError(f"{s.where}: unreadable images: {'; '.join(bad[:3])}" + (" ..." if len(bad) > 3 else ""))
        out["train" if split == "train" else "val"] = {"classes": classes, "images": len(s), "decoded": decoded}
    out["checked_seconds"] = round(time.time() - t0, 1)
    out["loader"] = _time_loader(splits["train"], data_dir, dataset, recipe, sample)
    return out


def _time_loader(split, data_dir, dataset: str, recipe: str | Path, sample: int) -> dict:
    """Seconds per training image of the loader's own work (one process), the recipe's augmentation."""
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from distill.args import parse_args
    from distill.data import build_train_loader
    args = parse_args(["-c", str(recipe), "--data-dir", str(data_dir), *(["--dataset", dataset] if dataset else []),
                       "--batch-size", "1", "--workers", "0", "--aug-repeats", "0"])
    cfg = {"input_size": (3, args.img_size, args.img_size), "interpolation": args.interpolation,
           "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "crop_pct": args.crop_pct}
    loader = build_train_loader(split, args, cfg, torch.device("cpu"), 0, 1, max(1, len(split.class_to_idx)))
    it = iter(loader)
    next(it)  # first call: imports and caches
    t0, n = time.perf_counter(), 0
    for _ in range(sample):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    per = (time.perf_counter() - t0) / max(1, n)
    return {"recipe": str(recipe), "samples": n, "seconds_per_image": round(per, 4),
            "images_per_second_per_worker": round(1 / per, 1)}


def view(data_dir: str | Path, dataset: str, dst: str | Path, train_per_class: int, val_images: int,
         readers: int) -> tuple[Path, str]:
    """A small container of the same kind: ``train_per_class`` images of every class and ``val_images`` val images
    (one per class, first classes first), copied out of the user's container; written once."""
    from distill.containers import kind_of, open_split
    from shapes.containers import STAMP, write_containers
    dst = Path(dst)
    kind = kind_of(data_dir, "train", dataset)
    spec = f"{Path(data_dir).resolve()}|{dataset}|{train_per_class}|{val_images}"
    made = dst / f"classification-{kind}"
    if (made / STAMP).is_file() and spec in (made / STAMP).read_text():
        return located(kind, made, dst)
    shutil.rmtree(dst, ignore_errors=True)
    folder = dst / "folder"
    for split, per_class, limit in (("train", train_per_class, None), ("val", 1, val_images)):
        s = open_split(data_dir, split if not dataset else {"val": "validation"}.get(split, split), dataset)
        names = {i: n for n, i in s.class_to_idx.items()}
        taken: dict[int, int] = {}
        total = 0
        items = _stream_items(s) if s.streams else (
            (s.open(i).read(), t, n.rsplit("/", 1)[-1]) for i, (n, t) in enumerate(s.samples))
        for data, target, name in items:
            if taken.get(target, 0) >= per_class:
                continue
            d = folder / split / str(names.get(target, target))
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
            taken[target] = taken.get(target, 0) + 1
            total += 1
            if (limit is not None and total >= limit) or \
                    (limit is None and len(taken) == len(names) and min(taken.values()) >= per_class):
                break
    n = sum(1 for _ in (folder / "train").rglob("*") if _.is_file())
    made = write_containers(folder, dst, [kind], name="imagenet", tag=spec,
                            per_shard=max(1, n // max(2, 2 * readers)))[kind]
    return located(kind, made, dst)
