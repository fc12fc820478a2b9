"""bench/gpu.py (the GPU throughput bench) in its CPU smoke configuration: every figure, from the real steps."""
import json
import math

import pytest
import torch

from conftest import run_tool

SMOKE = ["--device", "cpu", "--student", "resnet18", "--teacher", "resnet18", "--img-size", "64", "--batch-size", "8",
         "--iters", "2", "--warmup", "1", "--images", "16", "--workers", "0", "--amp-dtype", "none"]


def test_gpu_bench_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_bench.json"
    r = run_tool("bench/gpu.py", *SMOKE, "--out", str(out), timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    ips = res["images_per_s"]
    assert set(ips["memory"]) == {"plain", "online_kd", "cached_kd"}
    assert set(ips["loader"]) == {"loader_only", "plain", "online_kd", "cached_kd"}
    figures = [v for w in ips.values() for v in w.values()] + list(res["ratios"].values())
    assert len(res["ratios"]) == 7 and all(math.isfinite(v) and v > 0 for v in figures), res
    for k in ("date", "gpu", "torch", "timm"):
        assert res[k], k
    assert res["torch"] == torch.__version__
    # the cached-KD steps read the cache once per step (warm-up included), and the replay holds what was recorded
    c = res["config"]
    assert res["cache"]["reads"] == {"memory": c["warmup"] + c["iters"],
                                     "loader": c["loader_warmup"] + c["loader_iters"]}
    assert res["cache"]["replay_max_abs_diff"] < 1e-2  # float16 storage of logits of magnitude < 16
    assert c["hard_loss"] == "BinaryCrossEntropy" and c["optimizer"] == "lamb" and c["cache_topk"] == 10
    assert res["loader_error"] is None
    # the markdown table for the README
    assert "| cached KD (top-10 of 1000) |" in r.stdout and "| online KD / plain |" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the one-line error needs none")
def test_gpu_bench_without_a_gpu_is_one_line(tmp_path):
    r = run_tool("bench/gpu.py", "--out", str(tmp_path / "x.json"), timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda: no CUDA GPU"), r.stderr
