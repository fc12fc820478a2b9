"""A tools/transfer.py work dir reopens under mmdet's own packaged tools (tools/test.py, tools/train.py --resume)
and DetInferencer: the saved config names our hooks and backend in custom_imports, checkpoints load with
weights_only=True, and mmdet's numbers equal ours."""
import json
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_tool
from test_transfer import CFG, opts, student  # noqa: F401  (fixture)


def mmdet_tool(name: str) -> str:
    import mmdet
    path = Path(mmdet.__file__).parent / ".mim" / "tools" / name
    assert path.is_file(), f"mmdet ships no {path}"
    return str(path)


# as an installed project would be: `transfer` and `common` importable from anywhere, no wrapper on the path
INSTALLED = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def mmdet_metrics(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"coco/(bbox_mAP|segm_mAP): ([0-9.]+)", out)}


def test_every_detection_config_registers_its_hooks_without_the_wrapper(tmp_path):
    """In a fresh process, outside the repository, with only the installed packages: each config's custom_imports
    registers what it names (mmdet's registry builds SafeCheckpointHook, mmengine finds the atomic_local backend)."""
    configs = sorted(str(p) for p in (ROOT / "configs" / "detection").rglob("*.py") if "_base_" not in p.parts)
    assert len(configs) >= 10
    code = (
        "import sys\n"
        "from mmengine.config import Config\n"
        "from mmengine.fileio import get_file_backend\n"
        "from mmdet.registry import HOOKS\n"
        "for path in sys.argv[1:]:\n"
        "    cfg = Config.fromfile(path)\n"
        "    assert {'transfer.hooks', 'transfer.atomic_backend'} <= set(cfg.custom_imports.imports), path\n"
        "    hooks = [HOOKS.build(h) for h in cfg.custom_hooks]\n"
        "    assert [type(h).__name__ for h in hooks] == ['SafeCheckpointHook'], path\n"
        "    be = get_file_backend(str(path), backend_args=cfg.default_hooks.checkpoint.backend_args)\n"
        "    assert type(be).__name__ == 'AtomicLocalBackend', path\n"
        "print('ok', len(sys.argv) - 1)\n")
    r = run_tool("-c", code, *configs, env=INSTALLED, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and f"ok {len(configs)}" in r.stdout, (r.stdout + r.stderr)[-3000:]


@pytest.mark.slow
def test_mmdet_tools_on_a_transfer_work_dir(shapes_small, student, tmp_path):  # noqa: F811
    wd = tmp_path / "det"
    # 10 short epochs (warm-up shortened, seeded): enough for a non-zero mAP, so "equal" means something
    r = run_tool("tools/transfer.py", CFG, "--checkpoint", str(student), "--work-dir", str(wd),
                 *opts(shapes_small["coco"], 10), "param_scheduler.0.end=6", "param_scheduler.1.milestones=[9]",
                 "randomness.seed=0")
    assert r.returncode == 0, r.stderr[-3000:]
    trained = json.loads((wd / "results.json").read_text())
    saved = wd / Path(CFG).name  # mmengine's dump of the resolved config
    text = saved.read_text()
    assert "transfer.hooks" in text and "SafeCheckpointHook" in text and "atomic_local" in text
    ckpt = wd / "epoch_10.pth"
    torch.load(ckpt, weights_only=True)

    # mmdet's own tools/test.py, run from elsewhere, on the saved config: same numbers as our tools/test.py
    r = run_tool(mmdet_tool("test.py"), str(saved), str(ckpt), "--work-dir", str(tmp_path / "mmdet_test"),
                 env=INSTALLED, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    theirs = mmdet_metrics(r.stdout + r.stderr)
    assert set(theirs) == {"bbox_mAP", "segm_mAP"}, (r.stdout + r.stderr)[-3000:]
    r = run_tool("tools/test.py", str(saved), str(ckpt), "--out", str(tmp_path / "ours.json"),
                 "--work-dir", str(tmp_path / "our_test"))
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads((tmp_path / "ours.json").read_text())
    assert max(ours["bbox"]["stats"][0], ours["segm"]["stats"][0]) > 0, ours
    for iou in ("bbox", "segm"):  # mmdet prints 3 decimals
        assert theirs[f"{iou}_mAP"] == pytest.approx(ours[iou]["stats"][0], abs=6e-4), (theirs, ours)
        assert theirs[f"{iou}_mAP"] == pytest.approx(trained[iou]["mAP"], abs=1e-9), (theirs, trained)

    # DetInferencer on the repository's config (custom_imports and all) with that checkpoint
    from mmdet.apis import DetInferencer
    inf = DetInferencer(model=str(ROOT / CFG), weights=str(ckpt), device="cpu", show_progress=False)
    img = sorted((Path(shapes_small["coco"]) / "val2017").glob("*.png"))[0]
    pred = inf(str(img), no_save_vis=True)["predictions"]
    assert len(pred) == 1 and {"labels", "scores", "bboxes", "masks"} <= set(pred[0])

    # mmdet's own tools/train.py resumes the run (weights_only loading of our checkpoint) and trains epoch 2
    r = run_tool(mmdet_tool("train.py"), str(saved), "--work-dir", str(wd), "--resume",
                 "--cfg-options", "train_cfg.max_epochs=11", "train_cfg.val_interval=11", env=INSTALLED, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "resumed epoch: 10" in r.stdout + r.stderr
    assert torch.load(wd / "epoch_11.pth", weights_only=True)["meta"]["epoch"] == 11
    assert json.loads((wd / "results.json").read_text())["epoch"] == 11  # ResultsJsonHook came along

