"""tools/rehearse.py: the paper's paths at real settings, a few iterations each; --data-root and the one-line
GPU-only errors of tools/transfer.py; the stand-in data; distill's --limit-train-batches."""
import json
import shlex
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_main, run_tool

PAPER_CONFIGS = sorted(p.name for p in (ROOT / "configs" / "detection").glob("*.py"))


def test_list_names_every_paper_path_and_each_command_parses(tmp_path):
    r = run_tool("tools/rehearse.py", "--list", "--out", str(tmp_path / "out"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "out").exists()  # --list writes nothing
    ids = [ln.split(":")[0] for ln in r.stdout.splitlines() if ln and not ln.startswith(" ")]
    assert len(PAPER_CONFIGS) == 12  # Table 11's eight and the four ViTDet ViT-S/T configs
    for want in ["distill-a1-resnet50", "distill-a2-resnet50", "distill-a3-resnet50",
                 "distill-a2-vit_small_patch16_224", "distill-a2-vit_tiny_patch16_224", "distill-a2-convnextv2_tiny",
                 "distill-a2-kd-dkd-dist", "distill-a2-record", "distill-a2-replay", "distill-a2-kill-resume",
                 "convert-resnet50", "convert-convnextv2_tiny", "convert-vit_small_patch16_224",
                 "convert-vit_tiny_patch16_224", "onnx-resnet50-224", "onnx-resnet50-512", "onnx-convnextv2_tiny-224",
                 "onnx-convnextv2_tiny-512", "onnx-vit_small_patch16_224-pyramid-512x640",
                 "onnx-vit_tiny_patch16_224-pyramid-512x640"] + [f"det-{Path(c).stem}" for c in PAPER_CONFIGS]:
        assert want in ids, want
    commands = [shlex.split(ln.strip()) for ln in r.stdout.splitlines() if ln.startswith("    ")]
    from distill.args import parse_args
    distill = [c for c in commands if c[1] == "tools/distill.py"]
    assert len(distill) == 11
    for c in distill:  # the recipes' own settings, only iterations, batch, workers and data paths changed
        a = parse_args(c[2:])
        assert a.config.startswith("configs/distill/a") and a.limit_train_batches == 4 and a.epochs in (1, 2)
        assert a.img_size in (160, 224) and a.aug_repeats in (0, 3) and a.amp and a.bce_loss
        if a.teacher_cache:
            assert a.teacher is None  # the recipe's teacher gives way to the cache's
        else:
            assert a.teacher == "beitv2_base_patch16_224" and a.teacher_checkpoint
    det = [c for c in commands if c[1] == "tools/transfer.py"]
    assert len(det) == 24 and all("--data-root" in c for c in det)
    amp = [c for c in det if "convnextv2" in c[2] or "_vit-" in c[2]]  # AdamW + AMP configs (ConvNeXt-V2, ViTDet)
    assert len(amp) == 16 and all("--no-amp" in c for c in amp) and not any("--no-amp" in c for c in det if c not in amp)
    vit = [c for c in det if "_vit-" in c[2]]  # iteration-based: 2 iterations, checkpointed after the first
    assert all("train_cfg.max_iters=2" in c and "default_hooks.checkpoint.interval=1" in c for c in vit)
    assert {c[c.index("--checkpoint") + 1].split("/")[-2] for c in vit} == {"a2-vit_small_patch16_224",
                                                                          "a2-vit_tiny_patch16_224"}
    assert sum(c[1].endswith(".mim/tools/test.py") for c in commands) == 12
    pyramids = [c for c in commands if c[1] == "tools/export_onnx.py" and "pyramid" in c[c.index("--out") + 1]]
    assert len(pyramids) == 2 and all(c[c.index("--img-size") + 1:c.index("--img-size") + 3] == ["512", "640"]
                                      for c in pyramids)


def test_gpu_only_config_without_a_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = "configs/detection/cascade-mask-rcnn_convnextv2-t_fpn_3x_coco.py"
    r = run_main("tools/transfer.py", cfg, "--checkpoint", str(tmp_path / "student.pth"),
                 "--work-dir", str(tmp_path / "wd"))
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]  # mmengine's import warnings may come before it
    assert "Traceback" not in r.stderr and last.startswith("error:"), r.stderr[-2000:]
    assert "needs a GPU" in last and "--no-amp" in last


def test_gpu_only_parts_name_the_keys_to_change():
    from transfer.devices import gpu_only_parts, sync_bn_keys
    from transfer.finetune import load_config
    cfg = load_config(ROOT / "configs/detection/cascade-mask-rcnn_convnextv2-t_fpn_1x_coco.py")
    assert sync_bn_keys(cfg) == [f"model.roi_head.bbox_head.{i}.norm_cfg.type" for i in range(3)]
    parts = gpu_only_parts(cfg, distributed=True)
    assert len(parts) == 2 and "--no-amp" in parts[0] and "model.roi_head.bbox_head.2.norm_cfg.type=BN" in parts[1]
    assert gpu_only_parts(cfg, distributed=False, amp=False) == []
    r50 = load_config(ROOT / "configs/detection/mask-rcnn_r50_fpn_1x_coco.py")
    assert sync_bn_keys(r50) == ["model.backbone.norm_cfg.type"]
    assert gpu_only_parts(r50, distributed=False) == []  # one process: SyncBN normalises as BN


def test_data_root_points_every_split_and_evaluator_at_the_folder(tmp_path):
    from transfer.finetune import load_config
    for name in ("mask-rcnn_r50_fpn_1x_coco.py", "cascade-mask-rcnn_convnextv2-t_fpn_3x_coco.py"):
        cfg = load_config(ROOT / "configs/detection" / name, data_root=tmp_path)
        root = str(tmp_path.resolve()) + "/"
        for split in ("train", "val", "test"):
            assert cfg[f"{split}_dataloader"].dataset.data_root == root
        for split in ("val", "test"):
            assert cfg[f"{split}_evaluator"].ann_file == root + "annotations/instances_val2017.json"
    r = run_main("tools/test.py", "configs/detection/mask-rcnn_r50_fpn_1x_coco.py", str(tmp_path / "x.pth"),
                 "--data-root", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_standin_coco_has_the_80_categories_and_masks(tmp_path):
    from rehearse.data import coco_view, write_coco_standin
    from transfer.coco_check import check_coco_json
    root = write_coco_standin(tmp_path / "coco", train_images=3, val_images=2)
    for split, n in (("train", 3), ("val", 2)):
        s = check_coco_json(root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017")
        assert s.num_images == n and len(s.categories) == 80 and max(s.categories) == 90
        assert s.categories[1] == "person" and 12 not in s.categories  # COCO's real, non-contiguous ids
    data = json.loads((root / "annotations/instances_train2017.json").read_text())
    assert all(len(a["segmentation"][0]) >= 12 for a in data["annotations"])
    mtime = (root / "train2017" / data["images"][0]["file_name"]).stat().st_mtime
    assert write_coco_standin(root, train_images=3, val_images=2) == root  # reused, not rewritten
    assert (root / "train2017" / data["images"][0]["file_name"]).stat().st_mtime == mtime
    view = coco_view(root, tmp_path / "view", 1, 1)
    s = check_coco_json(view / "annotations/instances_train2017.json", view / "train2017")
    assert s.num_images == 1 and len(s.categories) == 80


def test_limit_train_batches_keeps_the_start_of_the_full_epoch():
    from distill.replay import EpochSampler
    full = EpochSampler(100, 0, 2, seed=0, repeats=3)
    part = EpochSampler(100, 0, 2, seed=0, repeats=3, limit=8)
    full.set_epoch(1)
    part.set_epoch(1)
    assert len(part) == 8 and list(part) == list(full)[:8]
    assert part.positions_per_epoch == full.positions_per_epoch


def test_measure_reads_the_tools_metrics_files(tmp_path):
    """Seconds per iteration from distill's progress.jsonl and mmengine's scalars.json, never from a log line."""
    from distill.outputs import PROGRESS_FILE, Progress
    from rehearse.measure import combine, distill_times, mmengine_scalars, mmengine_times, read_jsonl
    from rehearse.paths import DISTILL_PROGRESS
    assert DISTILL_PROGRESS == PROGRESS_FILE
    prog = tmp_path / PROGRESS_FILE
    p = Progress(3, "epoch 1/1", "log", 1, True, prog, epoch=1, epochs=1)
    for _ in range(3):
        p.update(loss=0.7)
    p.close()
    recs = read_jsonl(prog)
    assert [(r["epoch"], r["step"], r["total"], r["losses"]) for r in recs] == \
        [(1, k, 3, {"loss": 0.7}) for k in (1, 2, 3)]
    offset = prog.stat().st_size  # what a resumed run adds is read from here
    rows = [{"epoch": 1, "step": 1, "total": 3, "seconds": 18.5}, {"epoch": 1, "step": 2, "total": 3, "seconds": 26.5},
            {"epoch": 1, "step": 3, "total": 3, "seconds": 36.5}, {"rank": 0, "cuda_max_mb": 900},
            {"rank": 1, "cuda_max_mb": 1200}]
    with open(prog, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 2, "st')  # a killed writer's half line
    d = distill_times(read_jsonl(prog, offset))
    assert d == {"steps": 3, "first": 18.5, "samples": [8.0, 10.0], "seconds_per_iter": 9.0, "cuda_max_mb": 1200}
    vis = tmp_path / "wd" / "20261201_023000" / "vis_data"
    vis.mkdir(parents=True)
    scalars = [{"lr": 4e-05, "data_time": 2.0, "loss": 5.1, "time": 30.1234, "iter": 1, "memory": 5000, "step": 1},
               {"lr": 4e-05, "data_time": 0.5, "loss": 5.0, "time": 20.0, "iter": 2, "memory": 5100, "step": 2},
               {"coco/bbox_mAP": 0.0, "step": 1}]  # mmengine's LocalVisBackend: training iterations and metrics
    (vis / "scalars.json").write_text("".join(json.dumps(r) + "\n" for r in scalars))
    mm = mmengine_scalars(tmp_path / "wd", since=0)
    assert mmengine_scalars(tmp_path / "wd", since=time.time() + 60) == []  # an earlier run of the work dir
    m = mmengine_times(mm)
    assert m["seconds_per_iter"] == 20.0 and m["first"] == 30.12 and m["cuda_max_mb"] == 5100
    assert combine([d, m])["seconds_per_iter"] == 10.0  # the median of 8, 10 and 20
    only_first = combine([mmengine_times(mm[:1]), mmengine_times(mm[1:])])
    assert only_first == {"seconds_per_iter": 25.06, "includes_warmup": True, "cuda_max_mb": 5100}


@pytest.mark.slow
def test_transfer_data_root_outside_the_repository(r18_workdir, tmp_path):
    """tools/transfer.py and tools/test.py train and evaluate on a COCO folder given by --data-root alone (the shared
    work dir, conftest.r18_workdir, was trained from outside the repository that way)."""
    coco, wd = r18_workdir["coco"], r18_workdir["work_dir"]
    assert ROOT not in Path(coco).resolve().parents and ROOT not in Path(r18_workdir["cwd"]).resolve().parents
    res = json.loads((wd / "results.json").read_text())
    assert set(res["bbox"]) == {"mAP", "AP50", "AP75", "APs", "APm", "APl"}
    saved = (wd / "mask-rcnn_r18_fpn_shapes.py").read_text()
    assert str(Path(coco).resolve()) in saved and "data/shapes/coco" not in saved.split("data_root")[1]
    cfg = str(ROOT / "configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py")
    r = run_tool(str(ROOT / "tools/test.py"), cfg, str(wd / "epoch_1.pth"), "--data-root", str(coco),
                 "--out", str(tmp_path / "test.json"), "--work-dir", str(tmp_path / "t"), "--cfg-options",
                 "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "test.json").read_text())
    assert stats["bbox"]["stats"][0] == pytest.approx(res["bbox"]["mAP"], abs=1e-3)


BROKEN = """_base_ = '{base}'
# a backbone no student converts to: the rehearsal must report this path failed and go on
model = dict(backbone=dict(type='NoSuchBackbone'))
"""


@pytest.mark.slow
def test_rehearsal_subset_reports_a_broken_path_and_goes_on(tmp_path):
    """One distillation path, its validation and one paper detection config at real settings, plus a config naming a
    missing backbone: that path fails with its one-line reason, the others are ok, the exit status is 1."""
    broken = tmp_path / "broken_backbone.py"
    broken.write_text(BROKEN.format(base=ROOT / "configs/detection/mask-rcnn_r50_fpn_1x_coco.py"))
    out = tmp_path / "rehearse"
    r = run_tool("tools/rehearse.py", "--out", str(out), "--only", "distill-a2-resnet50", "validate-resnet50", "det-",
                 "--detection-config", "configs/detection/mask-rcnn_r50_fpn_1x_coco.py", str(broken),
                 "--batch-size", "4", "--steps", "2", "--det-iters", "1", timeout=1800)
    assert r.returncode == 1, (r.stdout + r.stderr)[-4000:]
    rep = json.loads((out / "report.json").read_text())
    rows = {p["id"]: p for p in rep["paths"]}
    assert list(rows) == ["distill-a2-resnet50", "validate-resnet50", "det-mask-rcnn_r50_fpn_1x_coco",
                          "det-broken_backbone"]
    assert rep["failed"] == ["det-broken_backbone"]
    bad = rows["det-broken_backbone"]
    assert "NoSuchBackbone" in bad["reason"] and bad["reason"].startswith("train: exit 2"), bad["reason"]
    assert Path(bad["log"]).is_file()
    for pid in ("distill-a2-resnet50", "det-mask-rcnn_r50_fpn_1x_coco"):
        row = rows[pid]
        assert row["status"] == "ok" and row["seconds_per_iter"] > 0 and row["peak_mem_mb"] > 100
        assert row["projection"]["seconds_here"] > row["projection"]["seconds_at_gpus"] > 0
    # the 1000-class student on a val folder holding 2 of the classes: labelled as trained (from train/)
    assert rows["validate-resnet50"]["status"] == "ok", rows["validate-resnet50"]
    scored = json.loads((out / "validate" / "resnet50.json").read_text())[0]
    assert (scored["img_size"], scored["crop_pct"], scored["images"]) == (224, 0.95, 2)  # the A2 run's eval transform
    det = rows["det-mask-rcnn_r50_fpn_1x_coco"]
    assert [s["name"] for s in det["steps"]] == ["train", "resume", "test", "mmdet-test"]
    assert det["projection"]["epochs"] == 12 and det["projection"]["dataset_images"] == 118_287
    assert det["swaps"] == ["SyncBN -> BN (1 norm_cfg)"]
    assert rows["distill-a2-resnet50"]["projection"]["epochs"] == 300
    md = (out / "report.md").read_text()
    assert "det-broken_backbone | **failed**" in md and "NoSuchBackbone" in md


def test_preflight_reads_every_class_and_names_a_bad_file(tmp_path):
    from common.io import UserError
    from rehearse.data import imagenet_view, preflight_imagenet, write_imagenet_standin
    root = write_imagenet_standin(tmp_path / "imagenet", train_per_class=2, val_images=2, num_classes=3)
    pf = preflight_imagenet(root, ROOT / "configs/distill/a2.yaml", sample=2)
    assert pf["train"] == {"classes": 3, "images": 6, "min_per_class": 2, "mean_size": [500, 375]}
    assert pf["val"]["images"] == 2 and pf["loader"]["images_per_second_per_worker"] > 0
    view = imagenet_view(root, tmp_path / "view", train_per_class=1, val_images=1)
    assert len(list((view / "train").rglob("*.JPEG"))) == 3 and len(list((view / "val").rglob("*.JPEG"))) == 1
    assert all(p.is_symlink() for p in (view / "train").rglob("*.JPEG"))
    first = sorted((root / "train").iterdir())[1]
    sorted(first.iterdir())[0].write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="unreadable images: .*" + first.name):
        preflight_imagenet(root, ROOT / "configs/distill/a2.yaml", sample=2)
    (root / "val" / "n_unknown").mkdir()
    (root / "val" / "n_unknown" / "x.JPEG").write_bytes((root / "val").rglob("*.JPEG").__next__().read_bytes())
    sorted(first.iterdir())[0].unlink()
    with pytest.raises(UserError, match="class folders that train/ lacks: n_unknown"):
        preflight_imagenet(root, ROOT / "configs/distill/a2.yaml", sample=2)


def test_preflight_coco_times_the_config_pipeline(tmp_path):
    from common.io import UserError
    from rehearse.data import preflight_coco, write_coco_standin
    root = write_coco_standin(tmp_path / "coco", train_images=2, val_images=1)
    cfg = ROOT / "configs/detection/mask-rcnn_r50_fpn_1x_coco.py"
    pf = preflight_coco(root, cfg, tmp_path / "timing", sample=4)
    assert pf["train"]["images"] == 2 and pf["val"]["categories"] == 80
    assert pf["loader"]["seconds_per_image"] > 0 and pf["loader"]["samples"] == 2
    next((root / "val2017").iterdir()).unlink()
    with pytest.raises(UserError, match="image files are missing"):
        preflight_coco(root, cfg, tmp_path / "timing", sample=4)


def test_bad_arguments_are_one_line(tmp_path):
    for args in (["--imagenet", str(tmp_path / "none")], ["--only", "no-such-path", "--list"],
                 ["--detection-config", str(tmp_path / "missing.py"), "--list"], ["--profile", "gpu", "--list"]):
        if args[:2] == ["--profile", "gpu"] and torch.cuda.is_available():
            continue
        r = run_main("tools/rehearse.py", "--out", str(tmp_path / "out"), *args)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and last.startswith("error:") and "Traceback" not in r.stderr, (args, r.stderr)


def test_recipe_teacher_gives_way_to_a_teacher_cache():
    """Found by the rehearsal: `-c a2.yaml --teacher-cache DIR` (the README's replay command) stopped with
    'drop --teacher' because the recipe names the teacher; the recipe's teacher now gives way to the cache."""
    from distill.args import parse_args
    base = ["-c", "configs/distill/a2.yaml", "--data-dir", "d", "--mixup-mode", "sample"]
    assert parse_args(base).teacher == "beitv2_base_patch16_224"
    assert parse_args(base + ["--teacher-cache", "c"]).teacher is None
    explicit = parse_args(base + ["--teacher-cache", "c", "--teacher", "resnet50"])
    assert explicit.teacher == "resnet50"  # given on the command line: the engine's one-line error stands


def test_gpu_profile_runs_every_command_under_torchrun_as_shipped(monkeypatch, tmp_path):
    """The gpu profile's command lines (built here without a GPU): torchrun on all GPUs, the recipes' batch,
    detection with --launcher pytorch and no swaps."""
    import rehearse.profiles as profiles
    from rehearse.paths import Plan, build
    monkeypatch.setattr(profiles, "gpu_count", lambda: 8)
    p = profiles.build_profile("gpu")
    assert (p.launcher, p.nproc, p.distill_batch, p.det_batch, p.swap_gpu_only) == ("torchrun", 8, None, None, False)
    configs = [Path("configs/detection/mask-rcnn_convnextv2-t_fpn_1x_coco.py")]
    plan = Plan(tmp_path, tmp_path / "imagenet", 1_281_167, {2 * 8 * p.det_iters: tmp_path / "coco"}, 118_287,
                tmp_path / "t.pth", configs)
    paths = {x.id: x for x in build(p, plan)}
    cmd = paths["distill-a2-resnet50"].steps[0].job.command(p.launcher, p.nproc)
    assert cmd.startswith("torchrun --standalone --nproc_per_node=8 tools/distill.py -c configs/distill/a2.yaml")
    assert "--batch-size" not in cmd  # the recipe's 256 per GPU
    det = paths["det-mask-rcnn_convnextv2-t_fpn_1x_coco"]
    assert det.swaps == [] and det.full["batch"] == 2 and det.full["nproc"] == 8
    for s in det.steps:
        c = s.job.command(p.launcher, p.nproc)
        assert c.startswith("torchrun --standalone --nproc_per_node=8 ") and c.endswith("--launcher pytorch")
        assert "--no-amp" not in c and "norm_cfg.type=BN" not in c
    assert paths["onnx-resnet50-800"].steps[0].job.command(p.launcher, p.nproc).startswith("python tools/export")
