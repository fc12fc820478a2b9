"""tools/validate.py: top-1/top-5 of checkpoints on an ImageFolder split, ReaL labels and extra folders as
distill.py's evaluation has them, results files, one-line errors, exact under torchrun; and the hub folders
distill.py writes next to student.pth, which timm itself loads."""
import csv
import json
import shutil

import pytest
import timm
import torch
from PIL import Image

from conftest import DISTILL_BASE, run_main, run_tool
from helpers_models import nontrivial


@pytest.fixture(scope="module")
def ilsvrc_like(tmp_path_factory):
    """Two classes, val images named as ImageNet's (ReaL labels key on the names), and a v2-style copy whose
    class folders are class indices."""
    root = tmp_path_factory.mktemp("ilsvrc")
    g = torch.Generator().manual_seed(0)
    i = 0
    for c in ("n01", "n02"):
        (root / "val" / c).mkdir(parents=True)
        for _ in range(4):
            i += 1
            arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / "val" / c / f"ILSVRC2012_val_{i:08d}.JPEG")
    # ReaL: image 1 has no labels (not counted); every other image is right whatever the model predicts
    (root / "real.json").write_text(json.dumps([[]] + [[0, 1]] * 7))
    for k, c in enumerate(("n01", "n02")):
        shutil.copytree(root / "val" / c, root / "v2" / str(k))
    return root


def test_real_labels_extra_folders_and_results_files(ilsvrc_like, tmp_path):
    torch.save(nontrivial("resnet18", num_classes=2).state_dict(), tmp_path / "r18.pth")
    rows = {}
    for ext in ("json", "csv"):
        out = tmp_path / f"res.{ext}"
        r = run_tool("tools/validate.py", "--data-dir", str(ilsvrc_like), "--model", "resnet18", "--checkpoint",
                     str(tmp_path / "r18.pth"), "--img-size", "32", "--crop-pct", "1.0", "--interpolation",
                     "bilinear", "--workers", "0", "--batch-size", "3", "--real-labels",
                     str(ilsvrc_like / "real.json"), "--extra-val", f"v2={ilsvrc_like / 'v2'}", "--results-file",
                     str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        if ext == "json":
            rows[ext] = json.loads(out.read_text())[0]
        else:
            with open(out) as f:
                rows[ext] = next(csv.DictReader(f))
    row = rows["json"]
    assert row["real_top1"] == 100.0 and row["real_top5"] == 100.0  # 7 counted images, each with both labels
    assert (row["v2_top1"], row["v2_top5"]) == (row["top1"], row["top5"])  # the same images, index-named folders
    assert row["top5"] == 100.0 and row["images"] == 8 and row["img_size"] == 32
    assert row["crop_pct"] == 1.0 and row["interpolation"] == "bilinear" and row["images_per_sec"] > 0
    assert list(rows["csv"])[:6] == ["model", "checkpoint", "top1", "top1_err", "top5", "top5_err"]
    assert float(rows["csv"]["top1"]) == row["top1"] and float(rows["csv"]["real_top1"]) == 100.0


def test_pairs_follow_the_command_line():
    from common.io import UserError
    from distill.validate import pairs
    order = [("model", "a"), ("checkpoint", "x"), ("model", "local-dir:out/timm"), ("model", "b"),
             ("checkpoint", "y")]
    assert pairs(order, False) == [("a", "x"), ("local-dir:out/timm", "out/timm"), ("b", "y")]
    assert pairs([("model", "resnet50")], True) == [("resnet50", None)]
    for bad, words in (([("model", "a"), ("model", "b"), ("checkpoint", "x")], "--model a has no weights"),
                       ([("checkpoint", "x"), ("model", "a")], "has no --model before it"),
                       ([("model", "a"), ("checkpoint", "x"), ("checkpoint", "y")], "has no --model before it"),
                       ([], "at least one --model")):
        with pytest.raises(UserError, match=words):
            pairs(bad, False)


def test_user_errors_are_one_line(ilsvrc_like, tmp_path):
    data = str(ilsvrc_like)
    torch.save(nontrivial("resnet18", num_classes=5).state_dict(), tmp_path / "r18_5.pth")

    def err(*args):
        r = run_main("tools/validate.py", "--data-dir", data, "--workers", "0", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        return r.stderr.strip().splitlines()[-1]

    line = err("--model", "resnet18", "--checkpoint", str(tmp_path / "r18_5.pth"))
    assert line.startswith("error: ") and "5-class classifier" in line and "labelled with 2 classes" in line
    assert ".csv or .json" in err("--model", "resnet18", "--checkpoint", str(tmp_path / "missing.pth"),
                                  "--results-file", str(tmp_path / "r.txt"))


@pytest.mark.slow  # several runs of the tool
def test_a_val_subset_is_labelled_as_training_was(tmp_path):
    """A val folder holding some of the classes (a view, a subset) takes its labels from the train folders next to
    it, or from --class-map, never from its own folder order; a class the labels lack is a one-line error."""
    for split, classes in (("train", ("n01", "n02", "n03")), ("val", ("n02",))):
        for c in classes:
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (60 * i, 90, 120)).save(tmp_path / "data" / split / c / f"{c}_{i}.JPEG")
    m = timm.create_model("resnet18", num_classes=3)
    with torch.no_grad():  # predicts class index 1 for every image: n02 in the train folders' order
        m.fc.weight.zero_()
        m.fc.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    torch.save(m.state_dict(), tmp_path / "r18.pth")

    def top1(*args):
        res = tmp_path / "res.json"
        r = run_tool("tools/validate.py", "--data-dir", str(tmp_path / "data"), "--model", "resnet18", "--checkpoint",
                     str(tmp_path / "r18.pth"), "--img-size", "32", "--workers", "0", "--results-file", str(res), *args)
        assert r.returncode == 0, r.stderr[-3000:]
        row = json.loads(res.read_text())[0]
        assert row["threads"] >= 1 and row["environment"]["lock_sha256"]  # what measured it
        return row["top1"]

    assert top1() == 100.0  # the split's own order would label n02 as 0: top-1 0
    (tmp_path / "order.txt").write_text("n02\nn01\nn03\n")  # now index 1 is n01
    assert top1("--class-map", str(tmp_path / "order.txt")) == 0.0
    (tmp_path / "data" / "val" / "n09").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "data" / "val" / "n09" / "x.JPEG")
    for extra, words in (((), "has class folders that"), (("--class-map", str(tmp_path / "no.txt")), "not found")):
        r = run_main("tools/validate.py", "--data-dir", str(tmp_path / "data"), "--model", "resnet18", "--checkpoint",
                     str(tmp_path / "r18.pth"), *extra)
        assert r.returncode == 2 and words in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]


def test_student_hub_folder_loads_with_timm(teacher_ckpt, shapes_small, tmp_path):
    """distill.py writes timm/ next to student.pth: timm.create_model('local-dir:...') builds and loads it with the
    run's preprocessing, giving student.pth's logits; validate and convert read the folder too."""
    run = teacher_ckpt.parent
    folder = run / "timm"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["num_classes"] == 12
    pc = cfg["pretrained_cfg"]
    assert pc["tag"] == "vanillakd" and pc["num_classes"] == 12
    assert pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 0.95 and pc["interpolation"] == "bicubic"
    assert pc["mean"] == list(timm.data.IMAGENET_DEFAULT_MEAN) and pc["std"] == list(timm.data.IMAGENET_DEFAULT_STD)
    hub = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    ref = timm.create_model("resnet18", num_classes=12)
    ref.load_state_dict(torch.load(teacher_ckpt, weights_only=True), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hub(x), ref.eval()(x))
    out = tmp_path / "r.json"
    r = run_tool("tools/validate.py", "--data-dir", str(shapes_small["classification"]), "--model",
                 f"local-dir:{folder}", "--model", "resnet18", "--checkpoint", str(teacher_ckpt), "--img-size", "32",
                 "--crop-pct", "0.95", "--workers", "0", "--results-file", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    hub_row, pth_row = json.loads(out.read_text())
    assert hub_row["top1"] == pth_row["top1"] and hub_row["crop_pct"] == 0.95
    r = run_main("tools/convert.py", str(folder), str(tmp_path / "bb.pth"))
    assert r.returncode == 0 and "(resnet18)" in r.stdout, r.stderr[-2000:]


@pytest.mark.slow
def test_vit_student_folders_carry_the_runs_preprocessing(shapes_small, tmp_path):
    """A ViT trained at 32 px with its own mean/std/crop and an EMA: timm/ and timm_ema/ rebuild it at 32 px with
    that preprocessing, and each gives the logits of its .pth."""
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE,
                 "--model", "vit_tiny_patch16_224", "--epochs", "1", "--train-subset", "0.25", "--model-ema",
                 "--crop-pct", "0.9", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                 "--output", str(tmp_path), "--experiment", "vit")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "vit"
    for folder, pth in (("timm", "student.pth"), ("timm_ema", "student_ema.pth")):
        pc = json.loads((run / folder / "config.json").read_text())["pretrained_cfg"]
        assert pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 0.9 and pc["fixed_input_size"]
        assert json.loads((run / folder / "config.json").read_text())["model_args"]["img_size"] == [32, 32]
        assert pc["mean"] == [0.5] * 3 and pc["std"] == [0.25] * 3
        hub = timm.create_model(f"local-dir:{run / folder}", pretrained=True).eval()
        ref = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=12)
        ref.load_state_dict(torch.load(run / pth, weights_only=True), strict=True)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(hub(x), ref.eval()(x)), folder
    assert not list(run.glob(".timm*"))  # no temporary folder left behind


@pytest.mark.slow
def test_torchrun_gives_the_single_process_figures(teacher_ckpt, shapes_small, tmp_path):
    """Each rank evaluates its own slice (36 images over 2 ranks, batch 5: uneven batches) and counts are summed."""
    common = ["--data-dir", str(shapes_small["classification"]), "--model", "resnet18", "--checkpoint",
              str(teacher_ckpt), "--img-size", "32", "--batch-size", "5", "--workers", "0"]
    r1 = run_tool("tools/validate.py", *common, "--results-file", str(tmp_path / "one.json"))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run_tool("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tools/validate.py", *common,
                  "--results-file", str(tmp_path / "two.json"), timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    one, two = (json.loads((tmp_path / f).read_text())[0] for f in ("one.json", "two.json"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert (two["top1"], two["top5"], two["images"]) == (one["top1"], one["top5"], one["images"])
    assert len([ln for ln in r2.stdout.splitlines() if " top1 " in ln]) == 1  # printed by rank 0 only
