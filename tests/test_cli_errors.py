"""Every tool ends a user mistake with one line and a non-zero exit, never a traceback: checked in-process through
each tool's main(argv) (conftest.run_main); the missing-path checks run each tool as a real process."""
import os

import pytest
import torch

from conftest import run_main, run_tool

CFG = "configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py"


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vanillakd-cli-pwned",))


@pytest.fixture()
def evil(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Evil()}, p)
    return p


def one_line_error(r, *words):
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(err) >= 1 and err[-1].startswith("error:"), r.stderr[-2000:]
    for w in words:
        assert w in err[-1], (w, err[-1])


def tool_calls(p, tmp):
    missing = str(tmp / "missing.pth")
    return {
        "distill": ["tools/distill.py", "--data-dir", str(tmp / "nodata"), "--model", "resnet18"],
        "distill-teacher": ["tools/distill.py", "--data-dir", str(tmp), "--model", "resnet18", "--teacher",
                            "resnet18", "--teacher-checkpoint", p],
        "convert": ["tools/convert.py", p, str(tmp / "o.pth"), "--model", "resnet18"],
        "transfer": ["tools/transfer.py", CFG, "--checkpoint", p, "--work-dir", str(tmp / "wd")],
        "test": ["tools/test.py", CFG, p],
        "export": ["tools/export_onnx.py", p, "--model", "resnet18", "--out", str(tmp / "o.onnx")],
        "coco_eval": ["tools/coco_eval.py", "--gt", missing, "--dt", missing],
    }


@pytest.mark.parametrize("tool", ["convert", "transfer", "test", "export", "coco_eval", "distill"])
def test_missing_paths(tmp_path, tool):
    r = run_tool(*tool_calls(str(tmp_path / "missing.pth"), tmp_path)[tool])
    one_line_error(r)
    assert "not found" in r.stderr or "no such file" in r.stderr


@pytest.mark.parametrize("tool", ["convert", "transfer", "test", "export", "distill-teacher"])
def test_code_carrying_pickles_are_refused(tmp_path, evil, tool):
    if os.path.exists("/tmp/vanillakd-cli-pwned"):
        os.unlink("/tmp/vanillakd-cli-pwned")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    from PIL import Image
    for split in ("train", "val"):
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / f"{i}.png")
    r = run_main(*tool_calls(str(evil), tmp_path)[tool])
    one_line_error(r, "--unsafe-load")
    assert not os.path.exists("/tmp/vanillakd-cli-pwned")


@pytest.mark.parametrize("tool", ["convert", "export", "test"])
def test_corrupt_checkpoints(tmp_path, tool):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    one_line_error(run_main(*tool_calls(str(bad), tmp_path)[tool]), "corrupt")


def test_bad_flags_and_names(tmp_path):
    r = run_main("tools/distill.py", "--data-dir", str(tmp_path), "--epochs", "many")
    assert r.returncode == 2 and "invalid int value" in r.stderr and "Traceback" not in r.stderr
    src = tmp_path / "s.pth"
    torch.save({"w": torch.zeros(1)}, src)
    one_line_error(run_main("tools/export_onnx.py", str(src), "--model", "resnet_nope", "--out", str(tmp_path / "x")),
                   "unknown timm model")
    (tmp_path / "train").mkdir()
    one_line_error(run_main("tools/distill.py", "--data-dir", str(tmp_path), "--model", "resnet18"),
                   "no class folders")
    (tmp_path / "train" / "a").mkdir()
    (tmp_path / "val" / "a").mkdir(parents=True)
    one_line_error(run_main("tools/distill.py", "--data-dir", str(tmp_path), "--model", "resnet18"), "no images")


def _tool(exc: BaseException):
    from common.errors import cli_main

    @cli_main
    def main(argv=None):
        main.seen = argv
        raise exc
    return main


def test_only_the_users_mistakes_become_one_line(tmp_path, capsys, monkeypatch):
    import pytest as _pytest

    from common.errors import UserError
    monkeypatch.delenv("VANILLAKD_DEBUG", raising=False)
    missing = str(tmp_path / "nope.pth")
    for exc, argv in ((UserError("bad flag"), []),
                      (FileNotFoundError(2, "No such file", missing), ["--checkpoint", missing]),
                      (FileNotFoundError(2, "No such file", missing + "/x/y"), ["--data-dir=" + missing])):
        with _pytest.raises(SystemExit) as e:
            _tool(exc)(argv)
        assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    # a file the user never named is our bug: its traceback stays
    with _pytest.raises(FileNotFoundError):
        _tool(FileNotFoundError(2, "No such file", "/internal/cache.json"))(["--checkpoint", missing])
    # --debug (removed before the tool parses) and VANILLAKD_DEBUG=1 show every traceback
    tool = _tool(UserError("bad flag"))
    with _pytest.raises(UserError):
        tool(["--epochs", "1", "--debug"])
    assert tool.seen == ["--epochs", "1"]  # the tool never saw --debug
    monkeypatch.setenv("VANILLAKD_DEBUG", "1")
    with _pytest.raises(UserError):
        _tool(UserError("bad flag"))([])
