"""Checkpoint safety: weights_only loading, refused code-carrying pickles, atomic writes, unwrapping."""
import argparse
import os

import pytest
import torch

from common.io import UserError, atomic_save, load_checkpoint, unwrap_state_dict


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vanillakd-pwned",))


def write_evil(path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, path)


def test_code_carrying_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    write_evil(p)
    if os.path.exists("/tmp/vanillakd-pwned"):
        os.unlink("/tmp/vanillakd-pwned")
    with pytest.raises(UserError, match="--unsafe-load"):
        load_checkpoint(p)
    assert not os.path.exists("/tmp/vanillakd-pwned")


def test_argparse_namespace_is_read_but_not_what_it_carries(tmp_path):
    """timm's CheckpointSaver stores its args as a Namespace: allowed, yet an object inside one is still refused."""
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(model="resnet18", lr=0.1)},
               tmp_path / "timm.pth")
    assert load_checkpoint(tmp_path / "timm.pth")["args"].model == "resnet18"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(x=Evil())}, tmp_path / "evil.pth")
    if os.path.exists("/tmp/vanillakd-pwned"):
        os.unlink("/tmp/vanillakd-pwned")
    with pytest.raises(UserError, match="--unsafe-load"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not os.path.exists("/tmp/vanillakd-pwned")


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x04 this is not a checkpoint")
    with pytest.raises(UserError, match="corrupt|unreadable"):
        load_checkpoint(bad)
    sd = {"w": torch.randn(100, 100)}
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError):
        load_checkpoint(trunc)


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "ck.pth"
    atomic_save({"w": torch.ones(3)}, p)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):
        atomic_save({"w": Boom()}, p)
    assert torch.equal(load_checkpoint(p)["w"], torch.ones(3))
    assert [f.name for f in tmp_path.iterdir()] == ["ck.pth"]  # no temp file left behind


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"student": sd, "optimizer": {}},
])
def test_unwrap_forms(wrap):
    sd = {"a.weight": torch.randn(2), "b.bias": torch.randn(3)}
    out = unwrap_state_dict(wrap(sd))
    assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)


def test_unwrap_prefers_ema_when_asked():
    sd, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert unwrap_state_dict({"state_dict": sd, "state_dict_ema": ema}, prefer_ema=True)["w"].item() == 1
    assert unwrap_state_dict({"state_dict": sd, "state_dict_ema": ema})["w"].item() == 0
    with pytest.raises(UserError, match="no model state dict"):
        unwrap_state_dict({"epoch": 1})


def test_mmengine_history_buffers_survive_a_weights_only_round_trip(tmp_path):
    """mmengine pickles HistoryBuffer objects into its checkpoints; our hook stores them as tensors (through
    HistoryBuffer's public ``data``) so that torch.load(weights_only=True) reads them back whole."""
    import numpy as np
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    from transfer.hooks import decode, encode
    buf = HistoryBuffer([0.5, 0.25, 2.0], [1, 2, 1], max_length=7)
    path = tmp_path / "c.pth"
    torch.save({"message_hub": {"loss": encode(buf), "step": encode(np.float32(3.5))}}, path)
    back = decode(torch.load(path, weights_only=True))
    got = back["message_hub"]["loss"]
    assert isinstance(got, HistoryBuffer) and got.max_length == 7
    assert np.allclose(got.data[0], [0.5, 0.25, 2.0]) and np.allclose(got.data[1], [1, 2, 1])
    assert back["message_hub"]["step"] == 3.5


def test_summarize_reads_what_runs_record_and_a_resumed_runs_backbone_meta(tmp_path):
    import json

    import torch

    from transfer.summarize import detection_rows
    run = {"detector": "MaskRCNN", "backbone": "ResNet", "max_epochs": 12}
    for name, recorded in (("a", {**run, "student": {"timm_model": "resnet50", "source": "/x/r50_kd/student.pth"}}),
                           ("b", run)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"bbox": {"mAP": 0.4}, "segm": {"mAP": 0.35},
                                                                  "run": recorded}))
    # b was resumed without --checkpoint: its student is in the meta tools/transfer.py wrote into backbone.pth
    torch.save({"meta": {"timm_model": "resnet18", "source": "/y/r18_kd/student.pth"}, "state_dict": {}},
               tmp_path / "b" / "backbone.pth")
    rows = {r["run"]: r for r in detection_rows(tmp_path)}
    assert rows["a"]["student"] == "resnet50 (r50_kd)" and rows["b"]["student"] == "resnet18 (r18_kd)"
    assert rows["a"]["schedule"] == rows["b"]["schedule"] and rows["b"]["box_ap"] == 0.4
