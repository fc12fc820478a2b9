import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# make test runs two xdist workers on two cores: one thread each (a worker's tools inherit it), else both cores
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
# a tool given all the cores (a study's one job at a time) shares them with the other worker: OpenMP threads that
# sleep at a barrier instead of spinning leave the other core's process its time (libgomp spins by default)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_tool(*args: str, timeout: int = 900, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a tool as a user would: a real process with the project's Python."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# the longest tests (`make test`'s --durations), started first
LONGEST = ("test_rehearsal_subset_reports_a_broken_path_and_goes_on",
           "test_preempted_study_on_slurm_ends_like_the_default_executor", "test_demo_smoke",
           "test_killed_study_continues_and_reports")


def pytest_collection_modifyitems(items):
    """The longest tests, then the other slow ones, then the rest: with the suite on two xdist workers a long test
    that starts last runs alone at the end while the other core idles (docs/testing.md)."""
    def rank(item) -> tuple[int, int]:
        if item.originalname in LONGEST:
            return 0, LONGEST.index(item.originalname)
        return (1 if item.get_closest_marker("slow") else 2), 0
    items.sort(key=rank)  # stable: file order within a rank


def built_once(tmp_path_factory, name: str, build: Callable[[Path], dict[str, Path]]) -> dict[str, Path]:
    """An expensive fixture built once per test session, not once per xdist worker: the first worker to ask builds
    it in a folder of the session's shared temporary directory under a file lock (pytest-xdist's documented
    pattern), the others wait and read the same folder. ``build(folder)`` returns the paths the tests read."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: .../pytest-N/popen-gwK
    folder, record = root / f"once_{name}", root / f"once_{name}.json"
    with FileLock(str(root / f"once_{name}.lock")):
        if not record.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker left when its build failed
            folder.mkdir()
            record.write_text(json.dumps({k: str(v) for k, v in build(folder).items()}))
    return {k: Path(v) for k, v in json.loads(record.read_text()).items()}


# the small shapes world of the tests: every class of the built-in world, a few images each
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 3


@pytest.fixture(scope="session")
def shapes_small(tmp_path_factory):
    """A small shapes world shared by the tests (classification + COCO)."""
    from shapes.generate import ShapesSpec, make_shapes
    spec = ShapesSpec(cls_train_per_class=TRAIN_PER_CLASS, cls_val_per_class=VAL_PER_CLASS, cls_size=32, det_train=24,
                      det_val=12)
    return built_once(tmp_path_factory, "shapes", lambda root: make_shapes(root, spec, seed=0))


# tiny, fast distillation runs: 32 px, batch 8, no warm-up, log lines instead of bars
DISTILL_BASE = ["--img-size", "32", "--batch-size", "8", "--workers", "0", "--warmup-epochs", "0", "--drop-path", "0",
                "--lr", "1e-3", "--progress", "log", "--log-interval", "100"]


@pytest.fixture(scope="session")
def teacher_ckpt(shapes_small, tmp_path_factory):
    """A resnet18 teacher trained one epoch on shapes_small (shared by the distillation tests)."""
    def train(out: Path) -> dict:
        r = run_tool("tools/distill.py", "--data-dir", str(shapes_small["classification"]), *DISTILL_BASE,
                     "--model", "resnet18", "--epochs", "1", "--output", str(out), "--experiment", "t")
        assert r.returncode == 0, r.stderr[-3000:]
        return {"student": out / "t" / "student.pth"}
    return built_once(tmp_path_factory, "teacher", train)["student"]


def tool_main(tool: str):
    """A tool's ``main(argv)``, imported from its file: its logic and error lines checked in-process."""
    import importlib.util
    path = ROOT / tool
    spec = importlib.util.spec_from_file_location(f"_tool_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_main(tool: str, *args: str) -> subprocess.CompletedProcess:
    """``run_tool`` in-process: the tool's ``main(argv)`` with its stdout/stderr captured and its exit status
    (SystemExit) as the return code. For the checks of what a tool says and exits with (its one-line errors)
    without a Python and torch start-up per check; each tool family keeps real-process checks too. An exception
    that is not a SystemExit propagates: a process would have printed its traceback."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            tool_main(tool)(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
    return subprocess.CompletedProcess([tool, *args], code, out.getvalue(), err.getvalue())


R18_DET_CFG = "configs/detection/cpu/mask-rcnn_r18_fpn_shapes.py"
# what a 1-epoch CPU fine-tune on the small shapes world needs beyond the config: no dataloader worker processes
NO_WORKERS = ["train_dataloader.num_workers=0", "val_dataloader.num_workers=0", "test_dataloader.num_workers=0",
              "train_dataloader.persistent_workers=False", "val_dataloader.persistent_workers=False",
              "test_dataloader.persistent_workers=False"]


@pytest.fixture(scope="session")
def r18_workdir(shapes_small, tmp_path_factory):
    """One CPU Mask R-CNN R18 fine-tuned for an epoch from a resnet18 student by tools/transfer.py, run from outside
    the repository with --data-root: the work dir every test that only reads one shares (built once per session)."""
    def finetune(base: Path) -> dict:
        import torch

        from helpers_models import nontrivial
        student = base / "student.pth"
        torch.save(nontrivial("resnet18", num_classes=5).state_dict(), student)
        wd = base / "det"
        r = run_tool(str(ROOT / "tools/transfer.py"), str(ROOT / R18_DET_CFG), "--checkpoint", str(student),
                     "--data-root", str(shapes_small["coco"]), "--work-dir", str(wd), "--cfg-options",
                     "train_cfg.max_epochs=1", "train_cfg.val_interval=1", *NO_WORKERS, cwd=base)
        assert r.returncode == 0, r.stderr[-3000:]
        return {"work_dir": wd, "student": student, "coco": shapes_small["coco"], "cwd": base}
    return built_once(tmp_path_factory, "r18_det", finetune)
