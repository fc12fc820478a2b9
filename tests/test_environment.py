"""The lock, the environment fingerprint and reproduction: the same command twice gives the same numbers."""
import json
import os

import pytest

from conftest import DISTILL_BASE, run_tool
from common import environment, lockfile


def test_installed_environment_equals_the_lock():
    import setuptools  # noqa: F401  (puts its vendored packages on sys.path: they must not count as installed)
    diff = lockfile.differences(lockfile.locked(), lockfile.installed())
    assert diff == [], "the environment is not the lock (make install):\n" + "\n".join(diff)


def test_the_lock_is_made_from_the_current_pins():
    assert lockfile.recorded_digest() == lockfile.input_digest(), \
        "requirements/pins.txt or pyproject.toml's dependencies changed after the lock was made: run make lock"


def test_lock_pins_every_package_with_hashes_but_the_one_built_here():
    text = lockfile.LOCK.read_text()
    pins = lockfile.locked()
    assert {"torch", "timm", "mmdet", "mmcv", "mmengine", "numpy", "pillow", "opencv-python", "scipy", "uv"} <= set(pins)
    blocks = [b for b in text.split("\n") if b and not b.startswith((" ", "#"))]
    assert len(blocks) == len(pins)
    for line in blocks:
        assert line.endswith("\\"), f"no hash for {line}"  # every pin is followed by its --hash lines


def test_differences_name_missing_extra_and_moved_packages():
    want = {"torch": "2.14.1", "numpy": "2.4.6", "pillow": "13.0.0"}
    have = {"torch": "2.14.1", "numpy": "2.4.7", "wheel": "0.45.1"}
    assert lockfile.differences(want, have) == ["missing: pillow==13.0.0", "extra: wheel==0.45.1",
                                                "other version: numpy 2.4.7 (lock: 2.4.6)"]
    assert lockfile.differences(want, dict(want)) == []
    assert lockfile.normalize("Typing_Extensions") == "typing-extensions"


def test_input_digest_follows_pins_and_dependencies_only(tmp_path):
    pins, project = tmp_path / "pins.txt", tmp_path / "pyproject.toml"
    pins.write_text("torch==2.14.1\n")
    project.write_text('[project]\nname = "x"\ndependencies = ["torch"]\n[tool.pytest.ini_options]\naddopts = "-ra"\n')
    d0 = lockfile.input_digest(pins, project)
    project.write_text('[project]\nname = "x"\ndependencies = ["torch"]\n[tool.pytest.ini_options]\naddopts = "-q"\n')
    assert lockfile.input_digest(pins, project) == d0  # a pytest option is not an input of the lock
    pins.write_text("torch==2.14.2\n")
    assert lockfile.input_digest(pins, project) != d0


def test_fingerprint_fields():
    import torch  # noqa: F401  (the fingerprint reads torch's threads and CPU capability once it is imported)
    env = environment.fingerprint()
    assert set(environment.PACKAGES) == set(env["packages"]) and env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["lock_sha256"] == environment.lock_sha256() and len(env["lock_sha256"]) == 16
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert set(env["cpu_flags"]) <= set(environment.NUMERIC_CPU_FLAGS)
    assert env["torch_threads"] == torch.get_num_threads() and env["gpu"] is None or torch.cuda.is_available()
    line = environment.short(env)
    assert env["lock_sha256"] in line and "thread" in line


def test_mixed_environments_are_named_in_one_line():
    a = {"python": "3.11.7", "packages": {"torch": "2.14.1"}, "lock_sha256": "ab", "git_commit": "c1",
         "cpu_model": "X", "cpu_flags": ["avx2"], "torch_threads": 1, "gpu": None, "git_dirty": False}
    assert environment.mixed_environments([a, dict(a, git_dirty=True)]) is None  # dirtiness alone is not a difference
    line = environment.mixed_environments([a, dict(a, torch_threads=2), dict(a, cpu_flags=["avx2", "amx_bf16"])])
    assert line.count("\n") == 0 and "3 different environments" in line
    assert "torch_threads" in line and "cpu_flags" in line and "packages" not in line
    assert "2 different" in environment.mixed_environments([a, None])  # a run that recorded none


def test_kernel_caps_are_recorded_and_make_another_environment():
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA (a CPU run below its own kernel level) change torch's kernels: the
    fingerprint records them, its one line says so, and a capped run is not compared with an uncapped one."""
    import subprocess
    import sys
    code = ("import json, torch; from common import environment as e; f = e.fingerprint(); "
            "print(json.dumps({'env': f, 'line': e.short(f)}))")
    caps = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=environment.ROOT,
                       env={**os.environ, **caps})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["env"]["kernel_env"] == caps and out["env"]["torch_cpu_capability"] == "DEFAULT"
    assert "kernels capped at DEFAULT (ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41)" in out["line"]
    plain = dict(out["env"], kernel_env={})
    assert "kernel_env" in environment.mixed_environments([plain, out["env"]])
    old = {k: v for k, v in plain.items() if k != "kernel_env"}  # recorded before the field existed: no caps
    assert environment.mixed_environments([plain, old]) is None and "capped" not in environment.short(plain)


def test_threads_are_given_not_inherited(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert environment.threads_for(2, None) == max(1, (__import__("os").cpu_count() or 1) // 2)
    assert environment.threads_for(2, 3) == 3
    assert environment.thread_env(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "VANILLAKD_THREADS": "1"}


def _rows(csv_text: str) -> list[dict]:
    import csv
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(csv_text.splitlines())]


def _numbers(summary: dict) -> dict:
    return {name: {k: v for k, v in s.items() if k != "dir"} for name, s in summary["settings"].items()}


@pytest.mark.slow
def test_the_same_distillation_twice_gives_the_same_numbers(shapes_small, teacher_ckpt, tmp_path):
    """A study cell (scratch and KD students from one teacher forward), run twice with one thread by a job runner's
    environment: the same top-1, losses and per-epoch metrics, and the threads recorded."""
    summaries = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE,
                     "--model", "resnet18", "--kd-loss", "none", "kd", "--teacher", "resnet18",
                     "--teacher-checkpoint", str(teacher_ckpt), "--epochs", "2", "--seed", "3",
                     "--aa", "rand-m7-mstd0.5", "--mixup", "0.1", "--cutmix", "1.0", "--bce-loss",
                     "--output", str(out), "--experiment", "cell", env=environment.thread_env(1))
        assert r.returncode == 0, r.stderr[-3000:]
        summaries.append(json.loads((out / "cell" / "summary.json").read_text()))
        summaries[-1]["metrics"] = [(out / "cell" / n / "metrics.csv").read_text() for n in ("resnet18-none", "resnet18-kd")]
    a, b = summaries
    assert _numbers(a) == _numbers(b) and a["teacher_top1"] == b["teacher_top1"]
    for ma, mb in zip(a["metrics"], b["metrics"]):  # every per-epoch figure but the epoch's seconds
        assert _rows(ma) == _rows(mb) and len(_rows(ma)) == 2
    assert a["environment"]["torch_threads"] == 1 and a["environment"]["threads_env"]["OMP_NUM_THREADS"] == "1"
    assert environment.mixed_environments([a["environment"], b["environment"]]) is None
