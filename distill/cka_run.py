"""Linear CKA between every stage of two timm models over an image folder: the run behind tools/cka.py (the
paper's Fig. 2), writing cka.csv, cka.png and cka.json. The estimator itself is distill/cka.py.

Why here: tools/cka.py stays its parser, and this logic is importable and testable in-process.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from common.io import UserError, atomic_file


def _load_model(name: str, checkpoint: str | None, pretrained: bool, num_classes: int | None, img_size: int,
                allow_pickle: bool, flag: str):
    """A timm model with a user's weights (our run files, any timm checkpoint, a hub folder, a layout timm maps;
    common.weights) or timm's pretrained ones."""
    from common.models import create_model
    from common.openmmlab import read_student
    from common.weights import build_with_weights
    if checkpoint is None:
        if not pretrained:
            raise UserError(f"give --checkpoint-{flag} for {name}, or --pretrained for timm's weights (network)")
        return create_model(name, pretrained=True, img_size=img_size)
    sd = read_student(checkpoint, allow_pickle)
    # the checkpoint's own classifier says how many classes (none: headless) unless --num-classes is given
    model, _ = build_with_weights(name, sd, num_classes, img_size, f"--checkpoint-{flag} {checkpoint}")
    return model


def _stage_names(model, n: int) -> list[str]:
    info = [f.get("module", "") for f in getattr(model, "feature_info", [])]
    return info[-n:] if len(info) >= n and all(info[-n:]) else [f"stage{i + 1}" for i in range(n)]


def _features(model, x, stages: int, pool: bool, mean, std) -> list:
    """Stage maps of one batch; each model sees the images normalised with its own mean/std."""
    x = (x - mean) / std
    feats = model.forward_intermediates(x, indices=stages, intermediates_only=True)
    return [f.flatten(2).mean(2) if pool and f.dim() > 2 else f.flatten(1) for f in feats]


def _write_png(path: Path, cka, names_a: list[str], names_b: list[str], label_a: str, label_b: str,
               title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    na, nb = len(names_a), len(names_b)
    fig, ax = plt.subplots(figsize=(1.2 * nb + 2.5, 1.0 * na + 2))
    im = ax.imshow(cka, vmin=0, vmax=1, cmap="magma", origin="lower")
    for i in range(na):
        for j in range(nb):
            v = float(cka[i, j])
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if v > 0.6 else "white")
    ax.set_xticks(range(nb), names_b, rotation=30, ha="right")
    ax.set_yticks(range(na), names_a)
    ax.set_xlabel(f"B: {label_b}")
    ax.set_ylabel(f"A: {label_a}")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="linear CKA")
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def compare(a: argparse.Namespace) -> dict:
    """tools/cka.py's arguments -> its summary (also written to OUT/cka.json)."""
    if a.batch_size < 4:
        raise UserError("--batch-size must be at least 4 (the unbiased HSIC needs 4 samples per batch)")
    if a.max_images is not None and a.max_images < 4:
        raise UserError("--max-images must be at least 4")

    import torch
    from timm.data import create_transform

    from .cka import MinibatchCKA
    from .data import build_dataset
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    ds = build_dataset(a.data_dir, a.split, is_training=False)
    # un-normalised tensors: each model normalises with its own mean/std in _features
    ds.transform = create_transform(a.img_size, is_training=False, interpolation=a.interpolation,
                                    crop_pct=a.crop_pct, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(a.seed)).tolist()
    order = order[: a.max_images] if a.max_images else order
    if len(order) < 4:
        raise UserError(f"{Path(a.data_dir) / a.split} has {len(order)} images; CKA needs at least 4")
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, order), batch_size=a.batch_size,
                                         shuffle=False, num_workers=a.workers)

    sides = []
    for flag, name, ckpt in (("a", a.model_a, a.checkpoint_a), ("b", a.model_b, a.checkpoint_b)):
        m = _load_model(name, ckpt, a.pretrained, a.num_classes, a.img_size, a.unsafe_load, flag)
        if not hasattr(m, "forward_intermediates"):
            raise UserError(f"timm model {name} has no forward_intermediates(); its stages cannot be read")
        m = m.eval().to(device)
        cfg = m.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1)
        sides.append((m, _stage_names(m, a.stages), mean, std))
    (ma, names_a, mean_a, std_a), (mb, names_b, mean_b, std_b) = sides

    acc = MinibatchCKA(len(names_a), len(names_b))
    t0 = time.time()
    with torch.no_grad():
        for x, _ in loader:
            x = x.to(device)
            try:
                fa = _features(ma, x, a.stages, a.pool, mean_a, std_a)
                fb = _features(mb, x, a.stages, a.pool, mean_b, std_b)
            except (IndexError, AssertionError, ValueError) as e:
                raise UserError(f"cannot take {a.stages} stages: {str(e).splitlines()[0][:160]}") from None
            acc.update(fa, fb)
    if acc.num_batches == 0:
        raise UserError(f"no batch of at least 4 images (have {len(order)}, --batch-size {a.batch_size})")
    cka = acc.compute()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "cka.csv", "w") as f:
        w = csv.writer(f)
        w.writerow(["stage_a", *names_b])
        for name, row in zip(names_a, cka.tolist()):
            w.writerow([name, *(f"{v:.6f}" for v in row)])
    label_a = f"{a.model_a} ({Path(a.checkpoint_a).name if a.checkpoint_a else 'pretrained'})"
    label_b = f"{a.model_b} ({Path(a.checkpoint_b).name if a.checkpoint_b else 'pretrained'})"
    features = "pooled" if a.pool else "flattened"
    _write_png(out / "cka.png", cka.numpy(), names_a, names_b, label_a, label_b,
               f"linear CKA, {acc.num_samples} images, {features} stage maps")
    summary = {"model_a": a.model_a, "checkpoint_a": a.checkpoint_a, "model_b": a.model_b,
               "checkpoint_b": a.checkpoint_b, "stages_a": names_a, "stages_b": names_b,
               "cka": [[None if v != v else v for v in row] for row in cka.tolist()],
               "estimator": "minibatch unbiased HSIC (Nguyen et al. 2021)", "features": features,
               "images": acc.num_samples, "batches": acc.num_batches, "skipped_images": acc.skipped_samples,
               "batch_size": a.batch_size, "img_size": a.img_size, "data": str(Path(a.data_dir) / a.split),
               "seconds": round(time.time() - t0, 2)}
    with atomic_file(out / "cka.json", "w") as f:
        json.dump(summary, f, indent=2)
    width = max(len(n) for n in names_a)
    print(" " * width + "  " + " ".join(f"{n[:8]:>8}" for n in names_b))
    for name, row in zip(names_a, cka.tolist()):
        print(f"{name:>{width}}  " + " ".join(f"{v:8.3f}" for v in row))
    print(f"{acc.num_samples} images in {acc.num_batches} batches; wrote {out / 'cka.csv'}, {out / 'cka.png'}")
    return summary

