"""INT8 (static, QDQ) quantization of an exported fp32 ONNX model, and what it costs: top-1, error, latency.

Why static QDQ: activations get fixed scales from calibration images, so the CPU runs integer kernels
(QLinearConv / QGemm after onnxruntime fuses the Q/DQ pairs) without a per-batch range pass; QDQ keeps the
graph readable by other runtimes (TensorRT, OpenVINO) as well. Calibration and evaluation images go through
the model's *eval* transform (timm ``resolve_data_config`` + ``create_transform(is_training=False)``): scales
calibrated on differently normalised inputs would be wrong for deployment.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.diskfull import out_of_space, writing
from common.io import UserError

if TYPE_CHECKING:
    import torch.nn as nn

# timm's ImageFolder extensions (timm.data.readers.img_extensions), here so that a folder mistake is reported
# before timm's import (seconds) rather than after it
IMG_EXTENSIONS = (".jpeg", ".jpg", ".png")


def onnx_session(path: str | Path):
    from export.onnx_export import onnx_session
    return onnx_session(path)


def eval_transform(model: nn.Module, img_size: int, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, crop_pct: float | None = None,
                   interpolation: str | None = None) -> tuple[Callable, dict]:
    """The fp32 model's eval preprocessing (model cfg, overridden by the flags given) and its config."""
    from timm.data import create_transform, resolve_data_config
    model = getattr(model, "model", model)  # the Backbone wrapper holds the timm model
    args = {"input_size": (3, img_size, img_size), "mean": mean, "std": std, "crop_pct": crop_pct,
            "interpolation": interpolation}
    cfg = resolve_data_config({k: v for k, v in args.items() if v is not None}, model=model)
    tf = create_transform(cfg["input_size"], is_training=False, interpolation=cfg["interpolation"],
                          mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode"))
    return tf, cfg


def list_images(folder: str | Path, what: str = "calibration folder") -> list[Path]:
    """Every image under FOLDER (any depth: an ImageFolder split or a flat folder), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not paths:
        raise UserError(f"no images in {what} {folder} (looked for {', '.join(IMG_EXTENSIONS)} at any depth)")
    return paths


def pick(paths: Sequence[Path], n: int) -> list[Path]:
    """N paths spread evenly over the sorted list, so every class folder is represented (deterministic)."""
    if n <= 0:
        raise UserError(f"--calib-size must be positive, got {n}")
    if n >= len(paths):
        return list(paths)
    return [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, n).round().astype(int))]


def load_batches(paths: Sequence[Path], transform: Callable, batch: int = 16) -> Iterator[np.ndarray]:
    """Preprocessed float32 NCHW batches of the images."""
    from PIL import Image
    for i in range(0, len(paths), batch):
        xs = []
        for p in paths[i:i + batch]:
            try:
                with Image.open(p) as im:
                    xs.append(transform(im.convert("RGB")).numpy())
            except OSError as e:
                raise UserError(f"cannot read image {p}: {str(e).splitlines()[0]}") from None
        yield np.stack(xs).astype(np.float32)


def val_dataset(folder: str | Path, num_classes: int | None):
    """timm's ImageDataset over an ImageFolder split: the class order training used (natural sort)."""
    from timm.data import ImageDataset
    folder = Path(folder)
    list_images(folder, "--int8-val folder")
    try:
        ds = ImageDataset(str(folder))
    except RuntimeError as e:
        raise UserError(f"cannot read --int8-val folder {folder}: {str(e).splitlines()[0]}") from None
    classes = ds.reader.class_to_idx
    if num_classes is not None and len(classes) != num_classes:
        raise UserError(f"--int8-val {folder} has {len(classes)} class folders but the model has {num_classes} "
                        f"classes (--num-classes or the checkpoint); expected {folder}/<class>/<image>")
    return ds


def quantize(fp32: str | Path, int8: str | Path, calib: Sequence[Path], transform: Callable,
             per_channel: bool = True, batch: int = 16) -> Path:
    """Static QDQ quantization: int8 weights per output channel, uint8 activations, MinMax calibration.

    uint8 activations x int8 weights (U8S8) is the pair x86 integer kernels are built for (AVX2 VPMADDUBSW,
    VNNI VPDPBUSD): on this project's AVX2 CPU a ResNet-18 ran at 0.3-0.6x fp32 latency with U8S8 and at
    1.1-1.3x with S8S8, at the same top-1 agreement. (On ARM, S8S8 would be the faster choice.)
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = load_batches(calib, transform, batch)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    int8 = Path(int8)
    int8.parent.mkdir(parents=True, exist_ok=True)
    # the work folder sits beside the output: the final rename stays on one filesystem, and a full disk is the
    # output's (one line naming the file, nothing left behind: the folder goes with the error)
    with tempfile.TemporaryDirectory(prefix=f".{int8.name}.", dir=int8.parent) as d, writing(int8, "ONNX file"):
        pre = Path(d) / "pre.onnx"
        root = logging.getLogger()
        level = root.level
        # onnxruntime warns through the root logger for every 1-D weight (LayerNorm scales) that cannot be
        # per-channel; it quantizes those per tensor, which is what we want, so the warning is only noise
        root.setLevel(logging.ERROR)
        try:
            # ORT's graph optimisations (BN folding, constant folding) and ONNX shape inference, so the quantizer
            # sees the final ops and their shapes. Its symbolic shape inference is skipped: on ConvNeXt-V2 it raises
            # a TypeError in its ReduceMean handler (opset 18 passes the axes as an input), and ONNX's own shape
            # inference suffices for these graphs (static channels, a symbolic batch)
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(Path(d) / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            onnx.checker.check_model(str(Path(d) / "q.onnx"), full_check=True)
        except UserError:
            raise
        except Exception as e:  # onnxruntime raises many kinds; the user needs the first line, not its internals
            if out_of_space(e, d):
                raise  # writing() turns it into DiskFull naming the output
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"onnxruntime INT8 quantization of {fp32} failed: {type(e).__name__}: {first[:300]}") \
                from None
        finally:
            root.setLevel(level)
        (Path(d) / "q.onnx").replace(int8)
    return int8


def top1(fp32: str | Path, int8: str | Path, dataset, transform: Callable, batch: int = 32) -> dict[str, float]:
    """Top-1 of the fp32 and INT8 models on DATASET and how often their predictions agree."""
    s32, s8 = onnx_session(fp32), onnx_session(int8)
    paths = [Path(p) for p, _ in dataset.reader.samples]
    labels = np.array([t for _, t in dataset.reader.samples])
    p32, p8 = [], []
    for x in load_batches(paths, transform, batch):
        p32.append(s32.run(None, {"input": x})[0].argmax(1))
        p8.append(s8.run(None, {"input": x})[0].argmax(1))
    a, b = np.concatenate(p32), np.concatenate(p8)
    t32, t8 = float((a == labels).mean()), float((b == labels).mean())
    return {"images": len(labels), "top1_fp32": t32, "top1_int8": t8, "top1_change": t8 - t32,
            "agreement": float((a == b).mean())}


def output_error(fp32: str | Path, int8: str | Path, images: Sequence[Path],
                 transform: Callable) -> dict[str, dict[str, float]]:
    """Per output: max abs error of INT8 vs fp32, and relative L2 error ||int8 - fp32|| / ||fp32||."""
    s32, s8 = onnx_session(fp32), onnx_session(int8)
    names = [o.name for o in s32.get_outputs()]
    err = {n: [0.0, 0.0, 0.0] for n in names}  # max abs, sum sq diff, sum sq ref
    for x in load_batches(images, transform):
        for n, r, q in zip(names, s32.run(None, {"input": x}), s8.run(None, {"input": x})):
            e = err[n]
            e[0] = max(e[0], float(np.abs(q - r).max()))
            e[1] += float(((q - r) ** 2).sum())
            e[2] += float((r ** 2).sum())
    return {n: {"max_abs": e[0], "rel_l2": (e[1] / e[2]) ** 0.5 if e[2] > 0 else float("nan")}
            for n, e in err.items()}


def latency(fp32: str | Path, int8: str | Path, img_size: int, batch: int = 1, warmup: int = 3,
            iters: int = 20) -> dict[str, float]:
    """Median latency of the two models, interleaved in this process so both see the same machine state."""
    sessions = {"fp32": onnx_session(fp32), "int8": onnx_session(int8)}
    x = np.random.RandomState(0).randn(batch, 3, img_size, img_size).astype(np.float32)
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, {"input": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(iters):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append(time.perf_counter() - t0)
    ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    return {"fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "int8_over_fp32": ms["int8"] / ms["fp32"]}
