"""Where a split's images live, read through timm's own readers, seen as one indexed list (or as a stream).

The containers ImageNet is held in, and how a command names them:

- folder: ``--data-dir D`` with ``D/<split>/<class>/<image>`` (timm's ``ReaderImageFolder``), as before;
- tar: ``--data-dir D`` with ``D/<split>.tar`` in place of the split folder: a tar of class folders, or a tar of
  per-class tars as ImageNet's train tar (timm's ``ReaderImageInTar``), read in place, never unpacked;
- parquet: ``--dataset hfds/<local folder or hub name>`` with ``--data-dir`` as the datasets cache: the hub's
  ImageNet-1k layout (``data/<split>-*.parquet``, an ``image`` column and a ClassLabel ``label``), read offline
  through timm's ``ReaderHfds`` (the datasets library);
- wds: ``--dataset wds/<name>`` with ``--data-dir`` holding WebDataset shards and timm's ``_info.json`` (splits,
  shard names, sample counts), streamed by timm's ``ReaderWds``.

Why one view: replayed augmentation, per-class subsets and the teacher cache need a stable sample index, and the
same run on every container needs the same sample ORDER, not only the same samples (timm's tar reader sorts member
names across classes; parquet rows come in the shards' order). ``Split.samples`` is that index for folders, tars
and parquet, always in the folder reader's order (class names sorted naturally, files sorted), and
``Split.open(i)`` reads sample i's bytes. Shards have no index: ``Split.streams`` is true and ``Split.stream``
gives timm's iterable dataset, split across ranks and loader workers as timm splits it.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.utils.data
from PIL import Image
from timm.utils.misc import natural_key

from common.io import UserError

KINDS = ("folder", "tar", "parquet", "wds")
INFO_NAMES = ("_info.json", "info.json")  # what timm's ReaderWds looks for


def kind_of(data_dir: str | Path, split: str, dataset: str = "") -> str:
    """folder, tar, parquet or wds: ``--dataset`` names the hub and shard containers, the files on disk the others."""
    prefix, sep, name = (dataset or "").partition("/")
    if dataset and (not sep or prefix.lower() not in ("hfds", "wds") or not name):
        raise UserError(f"--dataset {dataset}: give hfds/<folder or hub name> (parquet through the datasets library) "
                        "or wds/<name> (WebDataset shards in --data-dir); folders and tars need no --dataset")
    if dataset:
        return "parquet" if prefix.lower() == "hfds" else "wds"
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data directory not found: {root}")
    if (root / split).is_dir():
        return "folder"
    if (root / f"{split}.tar").is_file():
        return "tar"
    raise UserError(f"split folder not found: {root / split} (expected ImageNet layout: "
                    f"{root}/{split}/<class>/<image>, or the tar {root}/{split}.tar)")


class Split(torch.utils.data.Dataset):
    """One split of a container: its classes, its samples in the folder's order, and sample i's bytes.

    ``samples`` holds ``(name, target)``: the file path for folders, ``<where>/<class>/<file>`` for tars and parquet
    (names relative to ``prefix`` are the same in every container of the same images, so a teacher cache's data
    fingerprint is too). ``rows[i]`` is where sample i sits in timm's reader (None for folders, whose names are
    paths). Indexing gives ``(transform(image), target)``, like timm's ImageDataset.
    """

    def __init__(self, kind: str, where: str, prefix: str, class_to_idx: dict[str, int],
                 samples: list[tuple[str, int]] | None, reader: Any, rows: list[int] | None = None,
                 stream: Callable[..., Any] | None = None, num_samples: int = 0, shards: list[str] | None = None):
        self.kind, self.where, self.prefix = kind, where, prefix
        self.shards = shards  # WebDataset: the split's shard files
        self.class_to_idx = class_to_idx
        self.samples, self.reader, self.rows = samples, reader, rows
        self._stream, self._num_samples = stream, num_samples
        self.transform = None
        self._pid = os.getpid()

    @property
    def streams(self) -> bool:
        """WebDataset shards: no index, no random access."""
        return self.samples is None

    def __len__(self) -> int:
        return self._num_samples if self.samples is None else len(self.samples)

    @property
    def opener(self) -> Callable[[int], BinaryIO] | None:
        """What the replayable loader reads sample i with; None: the sample's name is a file path (folders)."""
        return None if self.rows is None else self.open

    def open(self, i: int) -> BinaryIO:
        """Sample i's encoded image bytes."""
        if self.rows is None:
            return open(self.samples[i][0], "rb")
        if self.kind == "tar" and self._pid != os.getpid():  # a forked worker must not share the parent's handles
            _forget_tar_handles(self.reader)
            self._pid = os.getpid()
        f, _ = self.reader[self.rows[i]]
        data = f.read()
        f.close()
        return io.BytesIO(data)

    def select(self, keep: list[int]) -> None:
        """Keep these samples, in this order (a per-class subset)."""
        self.samples = [self.samples[i] for i in keep]
        if self.rows is not None:
            self.rows = [self.rows[i] for i in keep]
        elif hasattr(self.reader, "samples"):
            self.reader.samples = self.samples  # timm's folder reader stays the same list

    def relative_name(self, i: int) -> str:
        return os.path.relpath(self.samples[i][0], self.prefix)

    def stream(self, **kwargs):
        """timm's iterable dataset over the shards (``kwargs``: is_training, batch_size, seed, ...)."""
        return self._stream(**kwargs)

    def __getitem__(self, i: int):
        with self.open(i) as f:
            img = Image.open(f)
            img = img.convert("RGB") if img.mode != "RGB" else img
            img.load()
        return (self.transform(img) if self.transform is not None else img), self.samples[i][1]


def open_split(data_dir: str | Path, split: str, dataset: str = "",
               class_to_idx: dict[str, int] | None = None) -> Split:
    """The split ``split`` of the container that ``data_dir`` / ``dataset`` name, labelled with ``class_to_idx``
    (class name -> index) when given, else with the container's own class order."""
    kind = kind_of(data_dir, split, dataset)
    if kind == "folder":
        return folder_split(Path(data_dir) / split, class_to_idx)
    if kind == "tar":
        return _rank0_first(lambda: _tar(Path(data_dir) / f"{split}.tar", class_to_idx))
    name = dataset.partition("/")[2]
    if kind == "parquet":
        return _rank0_first(lambda: _parquet(name, data_dir, split, class_to_idx))
    return _wds(name, Path(data_dir), split, class_to_idx)


def _rank0_first(build: Callable[[], Split]) -> Split:
    """Under torchrun, rank 0 opens the container first (timm's tar index cache, the datasets library's Arrow
    cache are written once), then the others read what it wrote."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return build()
    first = dist.get_rank() == 0
    if first:
        try:
            out = build()
        finally:
            dist.barrier()
        return out
    dist.barrier()
    return build()


# ---- folders


def folder_split(d: Path, class_to_idx: dict[str, int] | None) -> Split:
    """An ImageFolder ``d/<class>/<image>`` (timm's reader and its order)."""
    from timm.data import create_dataset
    if not any(c.is_dir() for c in d.iterdir()):
        raise UserError(f"no class folders in {d} (expected {d}/<class>/<image>)")
    try:
        ds = create_dataset("", root=str(d), split="", class_map=class_to_idx or "")
    except RuntimeError as e:
        raise UserError(f"no images in {d}: {str(e).splitlines()[0]}") from None
    if len(ds) == 0:
        raise UserError(f"no images in {d}")
    return Split("folder", str(d), str(d), ds.reader.class_to_idx, ds.reader.samples, ds.reader)


# ---- tars


def _tar(path: Path, class_to_idx: dict[str, int] | None) -> Split:
    """timm's tar reader, its samples put in the folder reader's order (natural sort of ``<class>/<file>``)."""
    from timm.data.readers.reader_image_in_tar import ReaderImageInTar
    try:
        reader = ReaderImageInTar(str(path), class_map=class_to_idx or "")
    except tarfile.ReadError as e:
        raise UserError(f"{path} is not a readable tar: {e}") from None
    except ValueError:  # timm unpacks an empty sample list
        raise UserError(f"no images in {path} (expected a tar of class folders <class>/<image>, or of per-class "
                        "tars <class>.tar as ImageNet's train tar)") from None
    rel = [_tar_member(s) for s in reader.samples]
    order = sorted(range(len(rel)), key=lambda i: natural_key(rel[i]))
    targets = reader.targets
    samples = [(f"{path}/{rel[i]}", int(targets[i])) for i in order]
    _forget_tar_handles(reader)
    return Split("tar", str(path), str(path), dict(reader.class_name_to_idx), samples, reader, rows=order)


def _tar_member(sample) -> str:
    """``<class>/<file>`` of a sample of timm's tar reader: (member, parent tar, child tar or None)."""
    ti, _, child = sample
    path = ti.path[2:] if ti.path.startswith("./") else ti.path  # `tar -cf x.tar -C train .` writes ./<class>/...
    return f"{os.path.splitext(os.path.basename(child.name))[0]}/{path}" if child is not None else path


def _forget_tar_handles(reader) -> None:
    """Drop the tar file handles timm's reader caches (opened again on the next read)."""
    states = [reader.tar_state] if reader.root_is_tar else list(reader.tar_state.values())
    for s in states:
        s.tf = None
        for c in s.children.values():
            c.tf = None


def tar_class_names(path: str | Path) -> list[str]:
    """The class names of a tar split (member folders, or per-class tars), naturally sorted; reads headers only."""
    from timm.data.readers.img_extensions import get_img_extensions
    ext = get_img_extensions(as_set=True)
    names = set()
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            stem, e = os.path.splitext(m.name)
            if e.lower() == ".tar":
                names.add(os.path.basename(stem))
            elif e.lower() in ext:
                names.add(os.path.basename(os.path.dirname(m.name)))
    return sorted(names, key=natural_key)


# ---- parquet (the hub's layout, through the datasets library)


def _offline() -> None:
    """The hub's datasets are read from the cache (--data-dir) only: no network at run time, unless the user's
    environment says otherwise (``HF_DATASETS_OFFLINE=0``). Set in the library too: it reads the variable once, at
    its import, which may have come first."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets.config as config
    config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = \
        os.environ["HF_DATASETS_OFFLINE"].upper() in config.ENV_VARS_TRUE_VALUES


def _parquet(name: str, cache: str | Path, split: str, class_to_idx: dict[str, int] | None) -> Split:
    """timm's ReaderHfds; rows in the folder's order (class, then file name), labels from the ClassLabel names."""
    _offline()
    import numpy as np
    import pyarrow.compute as pc
    from timm.data import create_dataset
    where = f"hfds/{name}"
    local = Path(name)
    if not local.exists() and (name.startswith((".", "/")) or not (Path(cache).is_dir() and "/" in name)):
        raise UserError(f"--dataset {where}: no such folder (a local copy laid out as the hub's: "
                        f"{name}/data/<split>-*.parquet), and not a hub name cached in --data-dir {cache}")
    if local.is_dir() and not any(local.rglob("*.parquet")):
        raise UserError(f"--dataset {where}: no .parquet files under {local} (the hub's layout: "
                        f"{local}/data/train-*.parquet, {local}/data/validation-*.parquet)")
    Path(cache).mkdir(parents=True, exist_ok=True)
    try:
        ds = create_dataset(where, root=str(cache), split=split)
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "split" in msg.lower():
            raise UserError(f"{where}: no split {split!r} ({msg[:200]})") from None
        raise UserError(f"{where}: {msg[:300]}") from None
    except (FileNotFoundError, ConnectionError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{where}: cannot be read offline from {cache}: {msg[:300]}") from None
    reader = ds.reader
    table = reader.dataset
    features = table.features
    if "label" not in features:
        raise UserError(f"{where} split {split}: no label column (columns: {', '.join(features)}); the hub's "
                        "ImageNet layout has 'image' and a ClassLabel 'label'")
    names = getattr(features["label"], "names", None)
    if not names:
        raise UserError(f"{where} split {split}: the label column is not a ClassLabel (its names are the class "
                        "order); write it with the datasets library's ClassLabel feature")
    data = table.data
    labels = np.asarray(data.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    paths = pc.struct_field(data.column("image").combine_chunks(), "path").to_pylist()
    files = [os.path.basename(p) if p else f"row{r:08d}" for r, p in enumerate(paths)]
    if (labels < 0).any():
        raise UserError(f"{where} split {split}: {int((labels < 0).sum())} rows have no label (-1), as the hub's "
                        "test split: train and validate on labelled splits")
    if class_to_idx is not None:
        unknown = sorted({names[i] for i in set(labels.tolist())} - set(class_to_idx))
        if unknown:
            raise UserError(f"{where} split {split} has classes the labels given lack: {', '.join(unknown[:3])}")
        remap = [class_to_idx.get(n, -1) for n in names]
        classes = dict(class_to_idx)
    else:
        remap = list(range(len(names)))
        classes = {n: i for i, n in enumerate(names)}
    order = sorted(range(len(files)), key=lambda r: (int(labels[r]), natural_key(files[r])))
    prefix = f"{where}/{split}"
    samples = [(f"{prefix}/{names[labels[r]]}/{files[r]}", remap[labels[r]]) for r in order]
    if not samples:
        raise UserError(f"no images in {where} split {split}")
    return Split("parquet", where, prefix, classes, samples, reader, rows=order)


# ---- WebDataset shards


def read_info(root: Path) -> tuple[Path, dict]:
    for n in INFO_NAMES:
        p = root / n
        if p.is_file():
            try:
                return p, json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{p} is not valid JSON: {e}") from None
    raise UserError(f"no _info.json in {root}: timm's WebDataset reader needs it (splits, each with its shard "
                    "filenames, shard_lengths and num_samples)")


def shard_samples(path: Path) -> int:
    """Samples in a shard: distinct keys (WebDataset's: the name up to the first dot), from the headers only."""
    keys = set()
    with tarfile.open(path) as tf:
        for m in tf:
            if m.isfile():
                d, base = os.path.split(m.name)
                keys.add(os.path.join(d, base.split(".", 1)[0]))
    return len(keys)


def check_shards(root: Path, split: str) -> tuple[Path, dict, dict]:
    """The split's entry of ``_info.json``, checked against the shards themselves (every count)."""
    info_path, info = read_info(root)
    splits = info.get("splits") or {}
    if split not in splits:
        raise UserError(f"{info_path} has no split {split!r} (it has: {', '.join(splits) or 'none'})")
    s = splits[split]
    files, lengths, total = s.get("filenames"), s.get("shard_lengths"), s.get("num_samples")
    if not files or lengths is None or total is None or len(files) != len(lengths):
        raise UserError(f"{info_path}: split {split} needs filenames, shard_lengths (one per file) and num_samples")
    if sum(lengths) != total:
        raise UserError(f"{info_path}: split {split} counts disagree: num_samples {total}, shard_lengths sum to "
                        f"{sum(lengths)}")
    for f, n in zip(files, lengths):
        p = root / f
        if not p.is_file():
            raise UserError(f"shard not found: {p} (listed in {info_path})")
        try:
            got = shard_samples(p)
        except tarfile.TarError as e:
            raise UserError(f"shard {p} is not a readable tar: {e}") from None
        if got != n:
            raise UserError(f"shard {p} holds {got} samples; {info_path} says {n} (split {split}): the counts "
                            "disagree with the shards")
    return info_path, info, s


def _wds(name: str, root: Path, split: str, class_to_idx: dict[str, int] | None) -> Split:
    if not root.is_dir():
        raise UserError(f"data directory not found: {root} (the WebDataset shards and _info.json)")
    info_path, info, s = check_shards(root, split)
    names = info.get("class_names")
    count = len(names) if names else info.get("num_classes")
    own = {n: i for i, n in enumerate(names)} if names else ({str(i): i for i in range(count)} if count else {})
    remap = None
    if class_to_idx is not None and own and class_to_idx != own:
        if not names:
            raise UserError(f"{info_path} names no classes (class_names): the .cls values cannot be mapped to "
                            "another class order")
        unknown = [n for n in names if n not in class_to_idx]
        if unknown:
            raise UserError(f"{info_path} has classes the labels given lack: {', '.join(unknown[:3])}")
        remap = [class_to_idx[n] for n in names]
    classes = dict(class_to_idx) if class_to_idx is not None else own

    def stream(is_training: bool = False, batch_size: int = 1, seed: int = 42, workers: int = 0,
               shards: list[int] | None = None):
        from timm.data import create_dataset
        ds = create_dataset(f"wds/{name}", root=str(root), split=split, is_training=is_training,
                            batch_size=batch_size, seed=seed)
        if shards is not None:  # an exact evaluation: these shards, each read once, by this process alone
            from dataclasses import replace
            info_ = ds.reader.split_info
            ds.reader.split_info = replace(info_, filenames=tuple(info_.filenames[k] for k in shards),
                                           shard_lengths=tuple(info_.shard_lengths[k] for k in shards),
                                           num_samples=sum(info_.shard_lengths[k] for k in shards))
            ds.reader.num_samples = ds.reader.split_info.num_samples
            ds.reader.dist_rank, ds.reader.dist_num_replicas = 0, 1
        ds.set_loader_cfg(num_workers=workers)
        if remap is not None:
            ds.target_transform = remap.__getitem__
        return ds

    return Split("wds", f"wds/{name} in {root}", str(root), classes, None, None, stream=stream,
                 num_samples=int(s["num_samples"]), shards=list(s["filenames"]))
