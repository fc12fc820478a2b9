"""Files users hold, in the layouts their repositories wrote them (official ConvNeXt-V2, original BEiT v2 with its
relative_position_index buffers, DeiT, timm 0.6.x CheckpointSaver, safetensors, hub folders, OpenMMLab): each goes
through the one way in (common.weights: the model's own timm filter, then a strict load) and gives what the
timm-layout file gives; a wrong architecture or a pickle with code is refused in one line."""
import json
import os

import pytest
import safetensors.torch
import timm
import torch

from conftest import DISTILL_BASE, run_main, run_tool
from helpers_layouts import deit_release, official_convnextv2, openmmlab_classifier, original_beit, timm06_saver
from helpers_models import nontrivial

from common.io import UserError
from common.weights import build_with_weights, load_model, read_state_dict

NUM = 12  # classes of the shapes world (shapes_small)
BEIT = "beitv2_base_patch16_224"  # the paper's teacher; timm has no smaller BEiT, so it runs at 32 px here


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each model twice: in timm's layout and in the layout its users hold."""
    d = tmp_path_factory.mktemp("layouts")
    f = {}
    cnx = nontrivial("convnextv2_atto", num_classes=NUM)
    torch.save(cnx.state_dict(), d / "cnx_timm.pth")
    torch.save(official_convnextv2(cnx.state_dict()), d / "cnx_official.pth")
    r18, r18_ema = nontrivial("resnet18", NUM, seed=1), nontrivial("resnet18", NUM, seed=2)
    torch.save(r18_ema.state_dict(), d / "r18_ema_timm.pth")
    torch.save(timm06_saver("resnet18", r18.state_dict(), r18_ema.state_dict()), d / "r18_saver.pth.tar")
    safetensors.torch.save_file(r18_ema.state_dict(), str(d / "r18_ema.safetensors"))
    timm.models.save_for_hf(r18_ema, str(d / "r18_hub"), safe_serialization=True,
                            data_config={"input_size": (3, 32, 32), "crop_pct": 0.95})
    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=NUM).eval()
    torch.save(vit.state_dict(), d / "vit_timm.pth")
    torch.save(deit_release(vit.state_dict()), d / "vit_deit.pth")
    f.update(cnx=cnx, r18=r18, r18_ema=r18_ema, vit=vit, dir=d)
    return f


@pytest.fixture(scope="module")
def beit(files):
    """BEiT v2-B at the release's 224 px (14x14 relative position tables), in timm's and the original layout."""
    torch.manual_seed(4)
    m = timm.create_model(BEIT, num_classes=NUM).eval()
    torch.save(m.state_dict(), files["dir"] / "beit_timm.pth")
    torch.save(original_beit(m), files["dir"] / "beit_original.pth")
    return m


def _logits(model, size, seed=0):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("case", ["convnextv2_official", "timm06_saver", "timm06_saver_ema", "safetensors",
                                  "hub_folder", "deit_release"])
def test_each_layout_gives_the_timm_models_logits(files, case):
    d = files["dir"]
    name, path, ref, size, kw = {
        "convnextv2_official": ("convnextv2_atto", d / "cnx_official.pth", files["cnx"], 64, {}),
        "timm06_saver": ("resnet18", d / "r18_saver.pth.tar", files["r18"], 64, {}),
        "timm06_saver_ema": ("resnet18", d / "r18_saver.pth.tar", files["r18_ema"], 64, {"prefer_ema": True}),
        "safetensors": ("resnet18", d / "r18_ema.safetensors", files["r18_ema"], 64, {}),
        "hub_folder": (None, d / "r18_hub", files["r18_ema"], 64, {}),
        "deit_release": ("vit_tiny_patch16_224", d / "vit_deit.pth", files["vit"], 32, {"img_size": 32}),
    }[case]
    model = load_model(name, path, **kw)
    assert model.num_classes == NUM  # the file's classifier, kept
    assert torch.equal(_logits(model, size), _logits(ref, size))


def test_original_beitv2_release_loads_and_gives_the_same_logits(files, beit):
    """{'model': ...} with every block's relative_position_index: timm's beit filter drops the buffers."""
    sd = read_state_dict(files["dir"] / "beit_original.pth")
    assert sum(k.endswith("relative_position_index") for k in sd) == 12
    model, fitted = build_with_weights(BEIT, sd)
    assert model.num_classes == NUM and not any(k.endswith("relative_position_index") for k in fitted)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), beit(x))


def test_classifier_is_never_dropped(files):
    """timm's own pretrained path drops a head whose class count differs; here it is a one-line error."""
    sd = read_state_dict(files["dir"] / "cnx_official.pth")
    with pytest.raises(UserError, match=r"does not fit convnextv2_atto: 2 with other shapes \(e\.g\. head\.fc\.weight"):
        build_with_weights("convnextv2_atto", sd, num_classes=1000)


@pytest.mark.slow
def test_validate_gives_the_same_top1_for_every_layout(files, beit, shapes_small, tmp_path):
    """One tools/validate.py run over each model in both layouts: equal top-1/top-5 pair by pair (one eval
    transform for all: a hub folder would otherwise bring its own crop_pct)."""
    d = files["dir"]
    pairs = [("convnextv2_atto", "cnx_timm.pth"), ("convnextv2_atto", "cnx_official.pth"),
             ("resnet18", "r18_ema_timm.pth"), ("resnet18", "r18_saver.pth.tar"), ("resnet18", "r18_ema.safetensors"),
             ("resnet18", "r18_hub"), ("vit_tiny_patch16_224", "vit_timm.pth"), ("vit_tiny_patch16_224", "vit_deit.pth"),
             (BEIT, "beit_timm.pth"), (BEIT, "beit_original.pth")]
    args = [a for m, c in pairs for a in ("--model", m, "--checkpoint", str(d / c))]
    out = tmp_path / "res.json"
    r = run_tool("tools/validate.py", "--data-dir", str(shapes_small["classification"]), *args, "--img-size", "32",
                 "--crop-pct", "0.9", "--interpolation", "bicubic", "--batch-size", "16", "--workers", "0", "--ema", "--results-file", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [row["checkpoint"] for row in rows] == [str(d / c) for _, c in pairs]
    assert len([ln for ln in r.stdout.splitlines() if " top1 " in ln]) == len(pairs)  # one line per model
    by = {c: row for (_, c), row in zip(pairs, rows)}
    for timm_file, other in (("cnx_timm.pth", "cnx_official.pth"), ("r18_ema_timm.pth", "r18_saver.pth.tar"),
                             ("r18_ema_timm.pth", "r18_ema.safetensors"), ("r18_ema_timm.pth", "r18_hub"),
                             ("vit_timm.pth", "vit_deit.pth"), ("beit_timm.pth", "beit_original.pth")):
        assert (by[other]["top1"], by[other]["top5"]) == (by[timm_file]["top1"], by[timm_file]["top5"]), other
    assert all(row["images"] == 36 and row["img_size"] == 32 for row in rows)


def test_convert_official_convnextv2_tiny_verifies(tmp_path):
    """The issue's failing command: the paper's released layout converts, verifies, and writes exactly what the
    timm-layout weights convert to."""
    from transfer.convert import convert_state_dict
    m = nontrivial("convnextv2_tiny", num_classes=1000)
    torch.save(official_convnextv2(m.state_dict()), tmp_path / "convnextv2_tiny-85.030.pth")
    r = run_tool("tools/convert.py", str(tmp_path / "convnextv2_tiny-85.030.pth"), str(tmp_path / "bb.pth"),
                 "--model", "convnextv2_tiny", "--verify", "--verify-size", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verified: max abs diff" in r.stdout
    got = torch.load(tmp_path / "bb.pth", weights_only=True)["state_dict"]
    want = convert_state_dict(m.state_dict(), "convnextv2_tiny")
    assert got.keys() == {f"backbone.{k}" for k in want}
    assert all(torch.equal(got[f"backbone.{k}"], v) for k, v in want.items())
    grn = [k for k in want if k.endswith("grn.gamma")]
    assert grn and all(got[f"backbone.{k}"].shape == want[k].shape == (want[k].numel(),) for k in grn)


@pytest.mark.parametrize("src,kw", [("cnx_official.pth", {}), ("r18_saver.pth.tar", {"prefer_ema": True}),
                                    ("r18_ema.safetensors", {}), ("r18_hub", {}), ("r18_openmmlab.pth", {})])
def test_convert_reads_every_layout(files, tmp_path, src, kw):
    from transfer.convert import convert_checkpoint, convert_state_dict, verify
    d = files["dir"]
    if src == "r18_openmmlab.pth":
        torch.save(openmmlab_classifier(files["r18_ema"].state_dict()), d / src)
    ref = files["cnx"] if src.startswith("cnx") else files["r18_ema"]
    name = "convnextv2_atto" if src.startswith("cnx") else "resnet18"
    model, dst = convert_checkpoint(d / src, tmp_path / "bb.pth", name if src.startswith("cnx") else None, **kw)
    assert model == name
    got = torch.load(dst, weights_only=True)["state_dict"]
    want = convert_state_dict(ref.state_dict(), name)
    assert got.keys() == {f"backbone.{k}" for k in want}
    assert all(torch.equal(got[f"backbone.{k}"].reshape(v.shape), v) for k, v in want.items())
    assert max(verify(ref.state_dict(), name, img_size=64)) < 1e-4


@pytest.mark.slow
def test_distill_takes_the_original_beitv2_teacher(files, beit, shapes_small, tmp_path):
    """The paper's command with the BEiT v2 release as --teacher-checkpoint (here at 32 px via --teacher-resize,
    timm's filter resizing the relative position tables) trains; --initial-checkpoint takes the official
    ConvNeXt-V2 layout (at lr 0 the student it writes is exactly the file's weights)."""
    r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE,
                 "--model", "convnextv2_atto", "--initial-checkpoint", str(files["dir"] / "cnx_official.pth"),
                 "--teacher", BEIT, "--teacher-checkpoint", str(files["dir"] / "beit_original.pth"),
                 "--teacher-resize", "32", "--epochs", "1", "--train-subset", "0.25", "--lr", "0", "--min-lr", "0",
                 "--output", str(tmp_path), "--experiment", "beit", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "beit" / "summary.json").read_text())
    assert summary["teacher"] == BEIT and summary["teacher_forwards_last_epoch"] >= 1
    assert f"teacher {BEIT}" in r.stdout
    student = torch.load(tmp_path / "beit" / "student.pth", weights_only=True)
    assert all(torch.equal(student[k], v) for k, v in files["cnx"].state_dict().items())


def _one_line(r, *words):
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), r.stderr[-2000:]
    for w in words:
        assert w in last, (w, last)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vanillakd-released-pwned",))


def test_refused_in_one_line(files, shapes_small, tmp_path):
    d, data = files["dir"], str(shapes_small["classification"])
    # another architecture: what is left unmatched after timm's mapping is named
    r = run_main("tools/validate.py", "--data-dir", data, "--model", "resnet18", "--checkpoint",
                 str(d / "cnx_official.pth"), "--workers", "0")
    _one_line(r, "does not fit resnet18", "missing", "unexpected")
    # another size: timm's filter cannot map it, and says so
    r = run_main("tools/convert.py", str(d / "cnx_official.pth"), str(tmp_path / "o.pth"), "--model", "convnextv2_femto")
    _one_line(r, "checkpoint does not fit convnextv2_femto", "checkpoint_filter_fn could not map it")
    assert not (tmp_path / "o.pth").exists()
    # a pickle that carries code, in the official layout's wrapping (convert, transfer, export and the distill
    # teacher refuse it too: tests/test_cli_errors.py)
    evil = tmp_path / "evil.pth"
    torch.save({"model": official_convnextv2(files["cnx"].state_dict())["model"], "x": Evil()}, evil)
    if os.path.exists("/tmp/vanillakd-released-pwned"):
        os.unlink("/tmp/vanillakd-released-pwned")
    r = run_main("tools/validate.py", "--data-dir", data, "--model", "convnextv2_atto", "--checkpoint", str(evil))
    _one_line(r, "--unsafe-load")
    assert not os.path.exists("/tmp/vanillakd-released-pwned")
    with pytest.raises(UserError, match="--unsafe-load"):
        load_model("convnextv2_atto", evil)
    assert not os.path.exists("/tmp/vanillakd-released-pwned")
    # a corrupt safetensors file, and a folder without weights
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="corrupt or unreadable safetensors"):
        read_state_dict(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without model.safetensors"):
        read_state_dict(tmp_path / "empty")
