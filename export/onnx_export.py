"""Distilled students to ONNX: a classifier (image -> logits) or a backbone (image -> four stage maps).

Backbone outputs come from timm's ``forward_intermediates()`` (the maps the detectors consume: strides
4/8/16/32 for CNNs), except for plain ViTs, whose backbone is ViTDet's pyramid (export/vit_pyramid.py: exported
by torch.export with height and width always dynamic). Batch is always dynamic; height/width optionally, for
models that take any size (CNNs): a ViT classifier's position embeddings fix its grid, and --dynamic-size on
one is refused.
Every export passes ``onnx.checker`` (full check); ``verify`` compares onnxruntime with PyTorch.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common.diskfull import writing
from common.io import UserError
from common.weights import build_with_weights
from common.models import create_model


class Backbone(nn.Module):
    """image -> tuple of the four stage feature maps (NCHW)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # indices=4: the last four stages (a ResNet's stem, at stride 2, is not one of them)
        return tuple(self.model.forward_intermediates(x, indices=4, intermediates_only=True))


def build_module(model_name: str, state_dict: dict | None, task: str = "classifier",
                 num_classes: int | None = None, img_size: int | None = None) -> nn.Module:
    """The timm model with the weights (any layout timm maps, loaded strictly: common.weights); class count from
    the checkpoint's classifier unless given. ``img_size`` reaches models that take one (ViTs)."""
    if task not in ("classifier", "backbone"):
        raise UserError(f"--task must be classifier or backbone, not {task!r}")
    if state_dict is not None:
        model, _ = build_with_weights(model_name, state_dict, num_classes, img_size, f"checkpoint for {model_name}")
    else:
        model = create_model(model_name, img_size=img_size,
                             **({"num_classes": num_classes} if num_classes is not None else {}))
    model.eval()
    return Backbone(model).eval() if task == "backbone" else model


Size = int | tuple[int, int]


def hw(size: Size) -> tuple[int, int]:
    """(height, width) from one size (square) or a pair."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def output_names(module: nn.Module, sample: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = module(sample)
    if isinstance(out, (tuple, list)):
        return [f"stage{i + 1}" for i in range(len(out))]
    return ["logits"]


def export(module: nn.Module, out_file: str | Path, img_size: Size = 224, dynamic_size: bool = False,
           opset: int = 18) -> Path:
    """Export with dynamic batch (and H/W when asked), then run onnx.checker's full check. A module marked
    ``dynamo_export`` (a ViT's detection pyramid) goes through torch.export with batch, height and width dynamic
    (export/vit_pyramid.py says why)."""
    import onnx
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    dynamo = getattr(module, "dynamo_export", False)
    height, width = hw(img_size)
    sample = torch.randn(2, 3, height, width)
    names = output_names(module, sample)
    probe = height + 32
    check_size = dynamic_size and not dynamo
    if check_size:
        # a ViT's position embeddings fix its patch grid to --img-size: the export would trace, but the file
        # would fail at any other size; say so now rather than ship a "dynamic" model that is not
        _check_size(lambda x: module(torch.from_numpy(x)), probe, "the model")
    tmp = out_file.with_suffix(".tmp.onnx")
    with _removed(tmp), writing(out_file, "ONNX file"):  # a full disk: one line, no partial file
        with torch.no_grad():
            if dynamo:
                dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim.DYNAMIC,
                        3: torch.export.Dim.DYNAMIC}
                torch.onnx.export(module, (sample,), input_names=["input"], output_names=names,
                                  dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True,
                                  verbose=False).save(str(tmp))
            else:
                axes = {0: "batch", **({2: "height", 3: "width"} if dynamic_size else {})}
                torch.onnx.export(module, (sample,), str(tmp), input_names=["input"], output_names=names,
                                  dynamic_axes={"input": axes, **{n: {0: "batch"} for n in names}},
                                  opset_version=opset, dynamo=False)
        onnx.checker.check_model(str(tmp), full_check=True)
        if check_size:  # the traced graph may still have the size baked in (reshapes to a fixed grid)
            sess = onnx_session(tmp, quiet=True)
            _check_size(lambda x: sess.run(None, {"input": x}), probe, "the exported graph")
        tmp.replace(out_file)
    return out_file


@contextlib.contextmanager
def _removed(tmp: Path):
    """``tmp`` is gone after the block, whatever happened in it."""
    try:
        yield
    finally:
        tmp.unlink(missing_ok=True)


def _check_size(run, size: int, what: str) -> None:
    try:
        with torch.no_grad():
            run(np.zeros((1, 3, size, size), np.float32))
    except Exception as e:  # AssertionError (timm's patch embed), RuntimeError (reshape), onnxruntime's Fail
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--dynamic-size: {what} does not run at {size}x{size} ({first[:160]}); models with a fixed "
                        "patch grid (ViTs) take only --img-size: export one file per input size instead") from None


def onnx_session(path: str | Path, quiet: bool = False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 4 if quiet else 3  # quiet: a failure we turn into a UserError is not logged twice
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def verify(module: nn.Module, onnx_file: str | Path, img_size: Size = 224, batch_sizes=(1, 3),
           sizes: list[Size] | None = None, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and PyTorch over batch sizes, sizes and two input kinds."""
    sess = onnx_session(onnx_file)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for s in sizes or [img_size]:
        h, w = hw(s)
        for b in batch_sizes:
            noise = torch.randn(b, 3, h, w, generator=g)
            # "real-looking": smooth, image-statistics input (normalized blurred noise)
            smooth = nn.functional.avg_pool2d(torch.rand(b, 3, h + 8, w + 8, generator=g), 9, 1) * 2 - 1
            for x in (noise, smooth / 0.25):
                with torch.no_grad():
                    ref = module(x)
                ref = ref if isinstance(ref, (tuple, list)) else (ref,)
                outs = sess.run(None, {"input": x.numpy()})
                for r, o in zip(ref, outs):
                    if tuple(r.shape) != tuple(o.shape):
                        raise UserError(f"onnx output shape {o.shape} differs from PyTorch {tuple(r.shape)}")
                    worst = max(worst, float(np.abs(r.numpy() - o).max()))
    return worst


def benchmark(module: nn.Module, onnx_file: str | Path, img_size: Size = 224, batch: int = 1,
              warmup: int = 3, iters: int = 10) -> dict[str, float]:
    """Median latency of onnxruntime and PyTorch eager, measured side by side in this process."""
    sess = onnx_session(onnx_file)
    x = torch.randn(batch, 3, *hw(img_size))
    xn = x.numpy()

    def run_torch():
        with torch.inference_mode():
            module(x)

    def run_ort():
        sess.run(None, {"input": xn})

    times = {"torch": [], "onnxruntime": []}
    for _ in range(warmup):
        run_torch()
        run_ort()
    for _ in range(iters):  # interleaved, so both see the same machine state
        for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"torch_ms": med["torch"] * 1e3, "onnxruntime_ms": med["onnxruntime"] * 1e3,
            "onnx_over_torch": med["onnxruntime"] / med["torch"]}
