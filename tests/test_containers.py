"""ImageNet in the containers users hold it: the small shapes world as class folders, tars, the hub's parquet layout
and WebDataset shards (the same image bytes), read through timm's readers by every tool, with every feature that
needs a stable sample index kept on the map-style ones, and one-line errors for broken containers."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from conftest import DISTILL_BASE as BASE, ROOT, built_once, run_main, run_tool
from shapes.generate import NUM_CLASSES

AUG = ["--aa", "rand-m7-mstd0.5", "--reprob", "0.25", "--aug-repeats", "2", "--mixup", "0.2", "--cutmix", "1.0",
       "--mixup-mode", "sample"]
CFG = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
       "interpolation": "bicubic"}


@pytest.fixture(scope="session")
def containers(shapes_small, tmp_path_factory):
    """shapes_small's class folders also as tars, the hub's parquet layout and WebDataset shards (16 samples a
    shard), built once per session; the parquet's datasets cache is filled here, so the tests only read it."""
    def build(root):
        from distill.containers import open_split
        from shapes.containers import write_containers
        made = write_containers(shapes_small["classification"], root, ["tar", "parquet", "wds"], per_shard=16)
        for split in ("train", "validation"):
            open_split(root / "hf_cache", split, f"hfds/{made['parquet']}")
        return {**made, "folder": shapes_small["classification"], "hf_cache": root / "hf_cache"}
    return built_once(tmp_path_factory, "containers", build)


def where(c, kind: str) -> list[str]:
    """The --data-dir / --dataset flags of a container."""
    return {"folder": ["--data-dir", str(c["folder"])], "tar": ["--data-dir", str(c["tar"])],
            "parquet": ["--data-dir", str(c["hf_cache"]), "--dataset", f"hfds/{c['parquet']}"],
            "wds": ["--data-dir", str(c["wds"]), "--dataset", "wds/shapes"]}[kind]


def val_split(kind: str) -> str:
    return "validation" if kind in ("parquet", "wds") else "val"


def _split(c, kind, split, **kw):
    from distill.containers import open_split
    a = where(c, kind)
    return open_split(a[1], split if kind in ("folder", "tar") or split == "train" else "validation",
                      a[3] if len(a) > 2 else "", **kw)


def test_every_container_holds_the_same_samples_in_the_folders_order(containers):
    """Same classes, same order, same labels and bytes at every index; the shards hold the same (bytes, label)."""
    for split in ("train", "val"):
        folder = _split(containers, "folder", split)
        names = [folder.relative_name(i) for i in range(len(folder))]
        digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p, _ in folder.samples]
        for kind in ("tar", "parquet"):
            s = _split(containers, kind, split)
            assert s.class_to_idx == folder.class_to_idx
            assert [s.relative_name(i) for i in range(len(s))] == names
            assert [t for _, t in s.samples] == [t for _, t in folder.samples]
            assert [hashlib.sha256(s.open(i).read()).hexdigest() for i in range(len(s))] == digest
        wds = _split(containers, "wds", split)
        assert wds.streams and len(wds) == len(folder) and wds.class_to_idx == folder.class_to_idx
        stream = wds.stream(shards=list(range(len(wds.shards))))
        stream.reader.input_img_mode = ""
        seen = sorted((hashlib.sha256(img.tobytes()).hexdigest(), t) for img, t in stream)
        from PIL import Image
        want = sorted((hashlib.sha256(Image.open(p).tobytes()).hexdigest(), t) for p, t in folder.samples)
        assert seen == want


def test_replayed_views_and_rank_shares_equal_on_folder_tar_and_parquet(shapes_small, containers):
    """The training loader gives the same augmented batches from every map-style container, and under 2 ranks
    every image once per epoch."""
    from distill.args import parse_args
    from distill.data import build_dataset, build_train_loader, subset_per_class
    batches = {}
    for kind in ("folder", "tar", "parquet"):
        args = parse_args([*where(containers, kind), *BASE, *AUG, "--train-subset", "0.5"])
        ds = build_dataset(args.data_dir, "train", dataset=args.dataset)
        subset_per_class(ds, 0.5, args.seed)
        loader = build_train_loader(ds, args, CFG, torch.device("cpu"), 0, 1, NUM_CLASSES)
        loader.sampler.set_epoch(1)
        batches[kind] = [(x, y) for x, y, *_ in loader]
        seen = []
        for rank in (0, 1):
            args = parse_args([*where(containers, kind), *BASE])
            full = build_dataset(args.data_dir, "train", dataset=args.dataset)
            ld = build_train_loader(full, args, CFG, torch.device("cpu"), rank, 2, NUM_CLASSES)
            seen += [i for _, _, _, index, _ in ld for i in index.tolist()]
        assert sorted(seen) == list(range(len(full)))  # 96 images, batch 8 x 2 ranks: each once
    for kind in ("tar", "parquet"):
        assert len(batches[kind]) == len(batches["folder"]) > 0
        for (x, y), (xf, yf) in zip(batches[kind], batches["folder"]):
            assert torch.equal(x, xf) and torch.equal(y, yf)


def test_validate_scores_a_folder_student_the_same_on_every_container(containers, teacher_ckpt, tmp_path):
    rows = {}
    for kind in ("folder", "tar", "parquet", "wds"):
        out = tmp_path / f"{kind}.json"
        r = run_main("tools/validate.py", *where(containers, kind), "--split", val_split(kind), "--model",
                     "resnet18", "--checkpoint", str(teacher_ckpt), "--img-size", "32", "--batch-size", "5",
                     "--workers", "2" if kind == "wds" else "0", "--results-file", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        rows[kind] = json.loads(out.read_text())[0]
    want = (rows["folder"]["top1"], rows["folder"]["top5"], rows["folder"]["images"])
    assert want[2] == 3 * NUM_CLASSES and 0 < want[0] < 100
    for kind, row in rows.items():
        assert (row["top1"], row["top5"], row["images"]) == want, kind


def test_distill_trains_the_same_student_on_folder_tar_and_parquet_and_streams_shards(containers, tmp_path):
    students = {}
    for kind in ("folder", "tar", "parquet", "wds"):
        extra = ["--workers", "2", "--aa", "rand-m7-mstd0.5", "--mixup", "0.2"] if kind == "wds" else \
            [*AUG, "--train-subset", "0.5"]
        r = run_main("tools/distill.py", *where(containers, kind), "--val-split", val_split(kind), *BASE, *extra,
                     "--model", "resnet10t", "--epochs", "1", "--output", str(tmp_path), "--experiment", kind)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads((tmp_path / kind / "summary.json").read_text())
        assert summary["num_classes"] == NUM_CLASSES and summary["settings"]["resnet10t"]["top1"] is not None
        students[kind] = torch.load(tmp_path / kind / "student.pth", weights_only=True)
        lines = [ln for ln in r.stdout.splitlines() if "WebDataset shards stream" in ln]
        assert len(lines) == (1 if kind == "wds" else 0), r.stdout[-2000:]
    assert "--train-subset" in lines[0] and "--teacher-cache" in lines[0]
    for kind in ("tar", "parquet"):  # same samples, same order, same views: the same weights
        assert all(torch.equal(students[kind][k], students["folder"][k]) for k in students["folder"]), kind


def test_shards_refuse_what_needs_an_index(containers, tmp_path):
    for extra, flag in ((["--train-subset", "0.5"], "--train-subset"),
                        (["--teacher-cache", str(tmp_path / "c")], "--teacher-cache"),
                        (["--mixup", "0.2", "--mixup-mode", "sample"], "--mixup-mode sample")):
        r = run_main("tools/distill.py", *where(containers, "wds"), "--val-split", "validation", *BASE, *extra,
                     "--model", "resnet10t", "--epochs", "1", "--output", str(tmp_path))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "stable sample index" in r.stderr and flag in r.stderr, r.stderr


@pytest.mark.slow  # three torchrun runs of two processes
def test_torchrun_trains_an_epoch_from_each_container(containers, tmp_path):
    for kind in ("tar", "parquet", "wds"):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "tools/distill.py", *where(containers, kind), "--val-split", val_split(kind), *BASE,
                            "--batch-size", "4", "--model", "resnet10t", "--epochs", "1", "--output", str(tmp_path),
                            "--experiment", kind], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, (kind, r.stderr[-3000:])
        summary = json.loads((tmp_path / kind / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["settings"]["resnet10t"]["top1"] is not None


@pytest.mark.slow  # three runs of the tool
def test_teacher_cache_recorded_from_parquet_replays_exactly(containers, teacher_ckpt, tmp_path):
    """Recorded on the parquet container, replayed on it: the cached student equals the online one; and the cache
    replays on the class folders of the same images too (the same index, so the same fingerprint)."""
    def run(kind, *extra, exp):
        r = run_main("tools/distill.py", *where(containers, kind), "--val-split", val_split(kind), *BASE, *AUG,
                     "--model", "resnet10t", "--epochs", "1", "--output", str(tmp_path), "--experiment", exp, *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        return torch.load(tmp_path / exp / "student.pth", weights_only=True)
    online = run("parquet", "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_ckpt),
                 "--record-teacher", str(tmp_path / "cache"), "--teacher-topk", "100", exp="online")
    for kind in ("parquet", "folder"):
        cached = run(kind, "--teacher-cache", str(tmp_path / "cache"), exp=f"cached-{kind}")
        diff = max((online[k].float() - cached[k].float()).abs().max().item() for k in online)
        assert diff < 1e-3, (kind, diff)  # float16 storage of the logits is the only difference


def _one_line(r, *words):
    """Exit 2, no traceback, the last line names the problem (the datasets library may print progress first)."""
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and err[-1].startswith("error:"), r.stderr[-2000:]
    for w in words:
        assert w in err[-1], (w, err[-1])


def test_broken_containers_are_named_in_one_line(containers, tmp_path):
    from datasets import Dataset, Features, Image
    validate = ["tools/validate.py", "--model", "resnet18", "--pretrained"]
    # a parquet folder without a label column
    (tmp_path / "nolabel" / "data").mkdir(parents=True)
    png = next(p for p, _ in _split(containers, "folder", "val").samples)
    Dataset.from_dict({"image": [{"bytes": open(png, "rb").read(), "path": "a.png"}]},
                      features=Features({"image": Image()})).to_parquet(
        str(tmp_path / "nolabel" / "data" / "validation-00000-of-00001.parquet"))
    _one_line(run_main(*validate, "--dataset", f"hfds/{tmp_path / 'nolabel'}", "--data-dir", str(tmp_path / "hf"),
                       "--split", "validation"), "no label column")
    # shards whose _info.json counts disagree with the shards
    for change, words in (({"shard_lengths": 1, "num_samples": 1}, ("holds 16 samples", "says 17")),
                          ({"num_samples": 1}, ("counts disagree", "num_samples 37"))):
        d = tmp_path / f"wds{len(change)}"
        shutil.copytree(containers["wds"], d)
        info = json.loads((d / "_info.json").read_text())
        for k, v in change.items():
            if k == "shard_lengths":
                info["splits"]["validation"][k][0] += v
            else:
                info["splits"]["validation"][k] += v
        (d / "_info.json").write_text(json.dumps(info))
        _one_line(run_main(*validate, "--dataset", "wds/shapes", "--data-dir", str(d), "--split", "validation"),
                  *words)
    # a tar with no images
    (tmp_path / "tars").mkdir()
    (tmp_path / "readme.txt").write_text("no images here")
    with tarfile.open(tmp_path / "tars" / "val.tar", "w") as tf:
        tf.add(tmp_path / "readme.txt", arcname="a/readme.txt")
    _one_line(run_main(*validate, "--data-dir", str(tmp_path / "tars")), "no images in", "val.tar")


def test_a_folder_run_imports_none_of_the_container_libraries(containers):
    code = ("import sys; from distill.data import build_dataset, build_eval_loader; "
            f"ds = build_dataset({str(containers['folder'])!r}, 'val'); "
            "cfg = dict(test_input_size=(3, 32, 32), interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3, "
            "crop_pct=1.0); next(iter(build_eval_loader(ds, cfg, 0, 1, batch_size=4, workers=0))); "
            "print(sorted({'datasets', 'webdataset', 'pyarrow', 'pandas'} & {m.split('.')[0] for m in sys.modules}))")
    r = run_tool("-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_make_shapes_writes_every_container_with_the_same_bytes(tmp_path):
    r = run_main("tools/make_shapes.py", "--out", str(tmp_path), "--cls-train-per-class", "2", "--cls-val-per-class",
                 "1", "--det-train", "1", "--det-val", "1", "--format", "folder", "tar", "parquet", "wds")
    assert r.returncode == 0, r.stderr
    for kind in ("tar", "parquet", "wds"):
        assert f"classification-{kind}: {tmp_path / f'classification-{kind}'}" in r.stdout
    from distill.containers import open_split
    folder = open_split(tmp_path / "classification", "train")
    tar = open_split(tmp_path / "classification-tar", "train")
    assert [open(p, "rb").read() for p, _ in folder.samples] == [tar.open(i).read() for i in range(len(tar))]
    with tarfile.open(tmp_path / "classification-tar" / "train.tar") as tf:  # ImageNet's train tar: per-class tars
        assert sorted(m.name for m in tf) == sorted(f"{c}.tar" for c in folder.class_to_idx)
    info = json.loads((tmp_path / "classification-wds" / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] == 2 * NUM_CLASSES and info["num_classes"] == NUM_CLASSES


def test_study_specs_pass_the_container_to_every_distill_job(tmp_path):
    from study.spec import expand
    spec = {"data": {"root": str(tmp_path), "shapes": {"format": ["folder", "parquet"]},
                     "classification": "{root}/hf_cache", "dataset": "hfds/{root}/classification-parquet",
                     "val_split": "validation"},
            "teacher": {"model": "resnet18"},
            "distill": {"students": ["resnet10t"], "methods": ["scratch", "kd"], "fractions": [0.5]}}
    jobs = expand(spec, tmp_path / "out")
    assert jobs[0].args[-2:] == ["folder", "parquet"]  # make_shapes.py --format folder parquet
    for job in jobs[1:]:
        i = job.args.index("--dataset")
        assert job.args[i + 1] == f"hfds/{tmp_path}/classification-parquet"
        assert job.args[job.args.index("--data-dir") + 1] == f"{tmp_path}/hf_cache"
        assert job.args[job.args.index("--val-split") + 1] == "validation"


def test_rehearsal_reads_each_container_through_a_view_of_it(containers, tmp_path):
    """The preflight opens both splits and decodes every class; the view is the same kind of container (the
    same bytes, every class); --list shows each path's container flags, and no teacher cache on shards."""
    from distill.containers import open_split
    from rehearse import containers as C
    for kind in ("tar", "parquet", "wds"):
        data_dir, dataset = where(containers, kind)[1], (where(containers, kind)[3:] or [""])[0]
        pf = C.preflight(data_dir, dataset, ROOT / "configs/distill/a2.yaml", sample=2)
        assert pf["train"]["images"] == 8 * NUM_CLASSES and pf["loader"]["images_per_second_per_worker"] > 0
        view_dir, view_ds = C.view(data_dir, dataset, tmp_path / kind, 1, 2, readers=1)
        train = open_split(view_dir, "train", view_ds)
        assert len(train) == NUM_CLASSES and train.kind == kind
        assert len(open_split(view_dir, "validation" if view_ds else "val", view_ds)) == 2
    for kind in ("parquet", "wds"):
        r = run_main("tools/rehearse.py", "--out", str(tmp_path / "out"), "--container", kind, "--only", "distill-a2",
                     "validate-resnet50", "--list")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "--dataset" in r.stdout and "--val-split validation" in r.stdout and "--split validation" in r.stdout
        assert ("distill-a2-record" in r.stdout) == (kind == "parquet"), r.stdout
