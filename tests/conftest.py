import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_tool(*args: str, timeout: int = 900, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a tool as a user would: a real process with the project's Python."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def shapes_small(tmp_path_factory):
    """A small shapes world shared by the tests (classification + COCO)."""
    from shapes.generate import ShapesSpec, make_shapes
    root = tmp_path_factory.mktemp("shapes")
    spec = ShapesSpec(cls_train_per_class=16, cls_val_per_class=6, cls_size=32, det_train=24, det_val=12)
    return make_shapes(root, spec, seed=0)
