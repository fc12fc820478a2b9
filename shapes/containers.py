"""The same images in every container: class-folder splits written as tars, the hub's parquet layout and
WebDataset shards, byte for byte (no image is decoded or encoded again).

Why: the demo, the tests, the study and the benchmark can then run on any container of the same data, so what a
container changes is measured, never confounded with other pixels. Written with the libraries' own tools: the
datasets library writes the parquet shards with its feature metadata (``image``, a ClassLabel ``label``), as the
hub's ImageNet-1k has them; webdataset's ``ShardWriter`` writes the shards, indexed by timm's ``_info.json``.

Layouts (distill/containers.py reads them):
- tar: ``OUT/train.tar`` as ImageNet's train tar (one ``<class>.tar`` per class), ``OUT/val.tar`` a tar of class
  folders (``<class>/<file>``): both kinds timm's tar reader takes;
- parquet: ``OUT/data/train-00000-of-00001.parquet``, ``OUT/data/validation-00000-of-00001.parquet`` (more
  shards with ``rows_per_shard``);
- wds: ``OUT/<name>-<split>-000000.tar``... and ``OUT/_info.json``; train shards hold a seeded shuffle of the split
  (as WebDataset sets are written, so a shard is not one class), validation shards the folder's order.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import tarfile
from pathlib import Path

FORMATS = ("folder", "tar", "parquet", "wds")
HUB_SPLITS = {"train": "train", "val": "validation"}  # the hub's split names (timm's --val-split validation)
STAMP = ".containers.json"


def folder_records(split_dir: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (naturally sorted) and ``(<class>/<file>, target)`` in timm's folder order."""
    from timm.data.readers.img_extensions import get_img_extensions  # here: make_shapes.py stays torch-free
    from timm.utils.misc import natural_key
    split_dir = Path(split_dir)
    ext = get_img_extensions(as_set=True)
    classes = sorted((c.name for c in split_dir.iterdir() if c.is_dir()), key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    files = [(f"{c}/{f.name}", index[c]) for c in classes for f in (split_dir / c).iterdir()
             if f.is_file() and f.suffix.lower() in ext]
    return classes, sorted(files, key=lambda r: natural_key(r[0]))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o644  # reproducible: no dates or owners
    return ti


def write_tar(split_dir: str | Path, out: str | Path, per_class_tars: bool = False) -> Path:
    """``split_dir/<class>/<file>`` as one tar: of class folders, or of per-class tars (ImageNet's train tar)."""
    split_dir, out = Path(split_dir), Path(out)
    classes, records = folder_records(split_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
        for c in classes:
            members = [r for r, _ in records if r.startswith(c + "/")]
            if per_class_tars:
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as inner:
                    for r in members:
                        data = (split_dir / r).read_bytes()
                        inner.addfile(_tarinfo(r.split("/", 1)[1], len(data)), io.BytesIO(data))
                tf.addfile(_tarinfo(f"{c}.tar", buf.tell()), io.BytesIO(buf.getvalue()))
            else:
                for r in members:
                    data = (split_dir / r).read_bytes()
                    tf.addfile(_tarinfo(r, len(data)), io.BytesIO(data))
    os.replace(tmp, out)
    return out


def write_parquet(split_dirs: dict[str, Path], out: str | Path, rows_per_shard: int = 0,
                  rows_per_group: int = 1000) -> Path:
    """The hub's layout: ``out/data/<split>-NNNNN-of-MMMMM.parquet`` per split, streamed in row groups (any size
    of data), with the datasets library's schema: its Features (``image`` bytes and path, ``label`` a ClassLabel
    of the class names in the folder's order) as the ``huggingface`` metadata the library reads back."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import ClassLabel, Features, Image
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    names = folder_records(next(iter(split_dirs.values())))[0]
    schema = Features({"image": Image(), "label": ClassLabel(names=names)}).arrow_schema
    for split, d in split_dirs.items():
        classes, records = folder_records(d)
        index = {c: names.index(c) for c in classes}
        per = rows_per_shard or len(records) or 1
        shards = max(1, -(-len(records) // per))
        for k in range(shards):
            part = records[k * per:(k + 1) * per]
            path = out / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet"
            with pq.ParquetWriter(path, schema) as w:
                for g in range(0, len(part), rows_per_group):
                    rows = part[g:g + rows_per_group]
                    w.write_table(pa.table({
                        "image": [{"bytes": (Path(d) / r).read_bytes(), "path": r.split("/", 1)[1]} for r, _ in rows],
                        "label": [index[r.split("/", 1)[0]] for r, _ in rows]}, schema=schema))
    return out


def write_wds(split_dirs: dict[str, Path], out: str | Path, name: str, per_shard: int = 16,
              seed: int = 0) -> Path:
    """WebDataset shards ``out/<name>-<split>-NNNNNN.tar`` (``key.<ext>`` and ``key.cls``, written by webdataset's
    ShardWriter) and timm's ``_info.json``, with the class count and names beside timm's keys."""
    import webdataset as wds
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = folder_records(next(iter(split_dirs.values())))[0]
    info: dict = {"name": name, "num_classes": len(names), "class_names": names, "splits": {}}
    for split, d in split_dirs.items():
        classes, records = folder_records(d)
        index = {c: names.index(c) for c in classes}
        if split == "train":
            random.Random(seed).shuffle(records)
        pattern = str(out / f"{name}-{split}-%06d.tar")
        lengths: list[int] = []
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
            for k, (r, _) in enumerate(records):
                ext = Path(r).suffix.lower().lstrip(".")
                sink.write({"__key__": f"{k:08d}", {"jpeg": "jpg"}.get(ext, ext): (Path(d) / r).read_bytes(),
                            "cls": index[r.split("/", 1)[0]]})
                if k % per_shard == 0:
                    lengths.append(0)
                lengths[-1] += 1
        files = [Path(pattern % i).name for i in range(len(lengths))]
        info["splits"][split] = {"name": split, "num_samples": len(records), "filenames": files,
                                 "shard_lengths": lengths}
    (out / "_info.json").write_text(json.dumps(info, indent=1))
    return out


def write_containers(folder: str | Path, root: str | Path, formats: list[str] | tuple[str, ...],
                     name: str = "shapes", tag: str = "", per_shard: int = 16) -> dict[str, Path]:
    """The class-folder set ``folder`` ({train,val}/<class>/<file>) in each of ``formats`` beside it under ``root``:
    ``classification-tar``, ``-parquet``, ``-wds``; each written once for a given ``tag`` (the source's stamp)."""
    folder, root = Path(folder), Path(root)
    splits = {s: folder / s for s in ("train", "val") if (folder / s).is_dir()}
    out: dict[str, Path] = {}
    for fmt in formats:
        if fmt == "folder":
            continue
        dst = root / f"classification-{fmt}"
        stamp = {"source": str(folder.resolve()), "tag": tag, "per_shard": per_shard, "name": name}
        out[fmt] = dst
        if (dst / STAMP).is_file() and json.loads((dst / STAMP).read_text()) == stamp:
            continue
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        if fmt == "tar":
            for split, d in splits.items():
                write_tar(d, dst / f"{split}.tar", per_class_tars=split == "train")
        elif fmt == "parquet":
            write_parquet({HUB_SPLITS[s]: d for s, d in splits.items()}, dst)
        elif fmt == "wds":
            write_wds({HUB_SPLITS[s]: d for s, d in splits.items()}, dst, name, per_shard)
        else:
            raise ValueError(f"unknown container {fmt!r}; known: {', '.join(FORMATS)}")
        (dst / STAMP).write_text(json.dumps(stamp))
    return out
