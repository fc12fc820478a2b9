"""A full disk: one line naming the file, the free space, what is intact and how to continue; no partial or temporary
file left; the previous checkpoint loads; --resume finishes once there is space.

On a real size-limited filesystem: a tmpfs mounted for the test (root only; skipped otherwise), so the writers meet
ENOSPC as they would on a full disk. The classification of the error shapes (torch's zip writer, safetensors,
quotas, file-size limits) is checked without one, and a file-size limit (RLIMIT_FSIZE, EFBIG) anywhere.
"""
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_main

MiB = 1 << 20


def mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"needs a tmpfs and could not mount one (root only): {r.stderr.strip()[:120]}")


def resize_tmpfs(path: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem."""
    d = tmp_path / "disk"
    mount_tmpfs(d, MiB)
    yield d
    unmount(d)


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(small_disk):
    from common.io import DiskFull, atomic_save
    path = small_disk / "last.pth"
    atomic_save({"w": torch.arange(1000.0)}, path)
    with pytest.raises(DiskFull) as e:
        atomic_save({"w": torch.zeros(MiB // 4)}, path)  # 1 MiB of floats: it cannot fit beside the old one
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"no space left on device while writing {path} (")
    assert f"free in {small_disk}); no partial file was left; the previous checkpoint is intact" in line
    assert not leftovers(small_disk)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(1000.0))


def test_hub_folder_onnx_file_and_mmengine_checkpoint_on_a_full_disk(small_disk):
    """The other writers: timm's save_for_hf (safetensors), an ONNX export, mmengine's checkpoint through the atomic
    backend. Each names its target and leaves nothing behind."""
    import timm

    from common.io import DiskFull
    from distill.hub import save_hub_folder
    from export.onnx_export import export
    from transfer.atomic_backend import AtomicLocalBackend
    model = timm.create_model("test_resnet", num_classes=12)  # 1.5 MB of weights
    with pytest.raises(DiskFull, match=rf"^no space left on device while writing {re.escape(str(small_disk))}/timm "
                                       ".*no partial file was left$"):
        save_hub_folder(model, small_disk / "timm", {"input_size": (3, 32, 32)})
    with pytest.raises(DiskFull, match=rf"while writing {re.escape(str(small_disk))}/m\.onnx "):
        export(model.eval(), small_disk / "m.onnx", 32)
    (small_disk / "epoch_1.pth").write_bytes(b"old")
    with pytest.raises(DiskFull, match="epoch_1.pth .*the previous file is intact"):
        AtomicLocalBackend().put(b"x" * (2 * MiB), small_disk / "epoch_1.pth")
    assert (small_disk / "epoch_1.pth").read_bytes() == b"old"
    assert not leftovers(small_disk), leftovers(small_disk)


def test_the_shapes_a_full_disk_takes():
    """torch.save to a path fails in its C++ zip writer without an errno; safetensors says "os error 28"; a quota is
    EDQUOT; a file-size limit EFBIG. Anything else is not a full disk."""
    from common.diskfull import out_of_space
    assert out_of_space(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded")) == "disk quota exceeded"
    assert out_of_space(OSError(errno.EFBIG, "File too large")) == "file too large (a file size limit)"
    safetensors = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert out_of_space(safetensors) == "no space left on device"
    zip_writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert out_of_space(zip_writer) is None  # no path to look at: not taken for a full disk
    assert out_of_space(RuntimeError("CUDA out of memory")) is None
    assert out_of_space(OSError(errno.EACCES, "Permission denied")) is None


def test_a_full_disk_anywhere_in_a_tool_is_one_line(capsys):
    """A write outside our writers (a log, TensorBoard's event file): cli_main's line, exit 2."""
    from common.errors import cli_main

    @cli_main
    def main(argv=None):
        raise OSError(errno.ENOSPC, "No space left on device", "/nonexistent/run/events.out")

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no space left on device while writing "
                                                    "/nonexistent/run/events.out (")


def test_a_file_size_limit_is_one_line_without_root(tmp_path):
    """RLIMIT_FSIZE (any user): the write fails with EFBIG, the temporary file goes, the old checkpoint stays."""
    code = ("import resource, signal, torch\n"
            "from common.io import DiskFull, atomic_save\n"
            f"atomic_save({{'w': torch.ones(10)}}, {str(tmp_path / 'c.pth')!r})\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
            "try:\n"
            f"    atomic_save({{'w': torch.zeros(100_000)}}, {str(tmp_path / 'c.pth')!r})\n"
            "except DiskFull as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"file too large (a file size limit) while writing {tmp_path / 'c.pth'} ("), r.stdout
    assert "no partial file was left; the previous checkpoint is intact" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]
    assert torch.equal(torch.load(tmp_path / "c.pth", weights_only=True)["w"], torch.ones(10))


@pytest.mark.slow
def test_distillation_on_a_disk_that_fills_up_ends_in_one_line_and_resumes(shapes_small, tmp_path):
    """A run whose second epoch's last.pth does not fit: exit 2 with one line, nothing partial, the first epoch's
    last.pth loads; given space, --resume ends with the student of a run that never met a full disk."""
    from conftest import DISTILL_BASE
    disk = tmp_path / "disk"
    mount_tmpfs(disk, 64 * MiB)
    try:
        args = ["tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE, "--model",
                "test_resnet", "--epochs", "2", "--model-ema", "--model-ema-decay", "0.9", "--output", str(disk)]
        env = {"OMP_NUM_THREADS": "1"}

        def run(*extra):
            return subprocess.run([sys.executable, *args, *extra], cwd=ROOT, capture_output=True, text=True,
                                  timeout=600, env={**os.environ, **env})

        r = run("--experiment", "ref")  # a run with room: its files' size, and the student to end with
        assert r.returncode == 0, r.stderr[-3000:]
        ref = disk / "ref"
        used = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file())
        last = (ref / "last.pth").stat().st_size
        for p in disk.iterdir():  # the reference moves off the small disk
            subprocess.run(["cp", "-r", str(p), str(tmp_path / p.name)], check=True)
        subprocess.run(["rm", "-rf", str(ref)], check=True)
        # room for everything once, and for the second epoch's students next to the first's, not for a second
        # last.pth beside the first one (a checkpoint is written to a temporary file, then renamed)
        resize_tmpfs(disk, used + last // 2)
        r = run("--experiment", "full")
        assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        run_dir = disk / "full"
        assert lines[0].startswith(f"error: no space left on device while writing {run_dir / 'last.pth'} (")
        assert lines[0].endswith(f"free in {run_dir}); no partial file was left; the last checkpoint "
                                 f"{run_dir / 'last.pth'} (after epoch 1) is intact: continue with the same command "
                                 "and --resume"), lines[0]
        assert not leftovers(run_dir), leftovers(run_dir)
        assert torch.load(run_dir / "last.pth", weights_only=True)["epoch"] == 1
        print(lines[0])

        resize_tmpfs(disk, 64 * MiB)  # space again
        r = run("--experiment", "full", "--resume")
        assert r.returncode == 0, r.stderr[-3000:]
        assert torch.load(run_dir / "last.pth", weights_only=True)["epoch"] == 2
        for name in ("student.pth", "student_ema.pth"):
            a = torch.load(tmp_path / "ref" / name, weights_only=True)
            b = torch.load(run_dir / name, weights_only=True)
            assert all(torch.equal(a[k], b[k]) for k in a), name
    finally:
        unmount(disk)
