"""Linear CKA: the math against an independent numpy formula, its invariances, and tools/cka.py end to end."""
import csv
import json

import numpy as np
import pytest
import timm
import torch

from conftest import VAL_PER_CLASS, run_main, run_tool
from shapes.generate import NUM_CLASSES
from distill.cka import MinibatchCKA, hsic_unbiased, linear_cka


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. (1)-(3): HSIC(K, L) = tr(K H L H) / (n-1)^2 with linear kernels."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, lm = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, lm) / np.sqrt(hsic(k, k) * hsic(lm, lm))


def np_hsic_unbiased(k: np.ndarray, lm: np.ndarray) -> float:
    """Song et al. 2012, eq. (5), written out with explicit loops over the zero-diagonal matrices."""
    n = k.shape[0]
    kt, lt = k.copy(), lm.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    term1 = np.trace(kt @ lt)
    term2 = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    term3 = 2 / (n - 2) * (one @ kt @ lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def rand(n, p, seed):
    return np.random.RandomState(seed).randn(n, p)


def orthogonal(p, seed):
    q, _ = np.linalg.qr(np.random.RandomState(seed).randn(p, p))
    return q


@pytest.mark.parametrize("n,p,q", [(20, 50, 70), (200, 8, 5), (30, 30, 3)])  # sample- and feature-space paths
def test_linear_cka_matches_numpy(n, p, q):
    x = rand(n, p, 0)
    y = x[:, :min(p, q)] @ rand(min(p, q), q, 1) + 0.5 * rand(n, q, 2)  # related, not identical
    ref = np_linear_cka(x, y)
    assert 0.05 < ref < 0.999
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref, abs=1e-10)


def test_linear_cka_flattens_feature_maps():
    x = torch.randn(12, 4, 3, 3, dtype=torch.float64)
    y = torch.randn(12, 2, 5, 5, dtype=torch.float64)
    assert linear_cka(x, y) == pytest.approx(np_linear_cka(x.reshape(12, -1).numpy(), y.reshape(12, -1).numpy()),
                                             abs=1e-10)


def test_linear_cka_invariances():
    x, y = rand(40, 16, 3), rand(40, 24, 4)
    y = y + x @ rand(16, 24, 5)
    base = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(x)) == pytest.approx(1.0, abs=1e-12)
    xq = x @ orthogonal(16, 6)
    yq = 7.5 * (y @ orthogonal(24, 7))
    assert linear_cka(torch.from_numpy(xq), torch.from_numpy(yq)) == pytest.approx(base, abs=1e-10)
    assert linear_cka(torch.from_numpy(0.01 * x), torch.from_numpy(y)) == pytest.approx(base, abs=1e-10)
    # not invariant to a general invertible transform (this is what tells CKA from CCA)
    a = np.diag(np.linspace(0.1, 10, 16))
    assert abs(linear_cka(torch.from_numpy(x @ a), torch.from_numpy(y)) - base) > 1e-3


def test_hsic_unbiased_matches_numpy():
    x, y = rand(9, 5, 8), rand(9, 7, 9)
    k, lm = x @ x.T, y @ y.T
    got = hsic_unbiased(torch.from_numpy(k), torch.from_numpy(lm)).item()
    assert got == pytest.approx(np_hsic_unbiased(k, lm), rel=1e-10)
    with pytest.raises(ValueError):
        hsic_unbiased(torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))


def test_minibatch_cka_estimator():
    rs = np.random.RandomState(10)
    x = rs.randn(96, 12)
    ys = [x @ rs.randn(12, 6) + 0.3 * rs.randn(96, 6), rs.randn(96, 9)]
    acc = MinibatchCKA(2, 2)
    feats_a = [torch.from_numpy(x), torch.from_numpy(x @ orthogonal(12, 11) * 3.0)]  # same representation
    for s in range(0, 96, 32):
        acc.update([f[s:s + 32] for f in feats_a], [torch.from_numpy(y[s:s + 32]) for y in ys])
    assert not acc.update([f[:3] for f in feats_a], [torch.from_numpy(y[:3]) for y in ys])  # < 4: skipped
    assert (acc.num_batches, acc.num_samples, acc.skipped_samples) == (3, 96, 3)
    cka = acc.compute().numpy()
    # the estimator by hand: ratio of the per-batch unbiased-HSIC averages
    ref = np.zeros((2, 2))
    for i, xa in enumerate([x, x @ orthogonal(12, 11) * 3.0]):
        for j, yb in enumerate(ys):
            num = aa = bb = 0.0
            for s in range(0, 96, 32):
                k, lm = xa[s:s + 32] @ xa[s:s + 32].T, yb[s:s + 32] @ yb[s:s + 32].T
                num += np_hsic_unbiased(k, lm)
                aa += np_hsic_unbiased(k, k)
                bb += np_hsic_unbiased(lm, lm)
            ref[i, j] = num / np.sqrt(aa * bb)
    np.testing.assert_allclose(cka, ref, rtol=1e-9)
    assert cka[0] == pytest.approx(cka[1], abs=1e-9)  # orthogonal transform and scaling of A change nothing
    assert cka[0, 0] > 0.5 and abs(cka[0, 1]) < 0.3  # related vs independent

    same = MinibatchCKA(1, 1)
    same.update([torch.from_numpy(x[:32])], [torch.from_numpy(x[:32])])
    assert same.compute().item() == pytest.approx(1.0, abs=1e-12)


# ---- tools/cka.py end to end


@pytest.fixture(scope="module")
def r18_states(tmp_path_factory):
    d = tmp_path_factory.mktemp("cka_models")
    paths = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = timm.create_model("resnet18", num_classes=5)
        torch.save(m.state_dict(), d / f"r18_{seed}.pth")
        paths[seed] = d / f"r18_{seed}.pth"
    # the same weights as r18_0, the way our last.pth wraps them (one setting, DDP-prefixed keys)
    sd = torch.load(paths[0], weights_only=True)
    torch.save({"version": 1, "epoch": 3, "settings": {"resnet18": {"student": {f"module.{k}": v for k, v in sd.items()}}}},
               d / "last.pth")
    paths["last"] = d / "last.pth"
    return paths


def cka_args(shapes_small, out, a, b, *extra, model_a="resnet18"):
    return ["tools/cka.py", "--data-dir", str(shapes_small["classification"]), "--split", "val",
            "--model-a", model_a, "--checkpoint-a", str(a), "--model-b", "resnet18", "--checkpoint-b", str(b),
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--out", str(out), *extra]


def read_csv(path):
    rows = list(csv.reader(open(path)))
    return rows[0], rows[1:]


def test_tool_model_against_itself(shapes_small, r18_states, tmp_path):
    out = tmp_path / "self"
    r = run_tool(*cka_args(shapes_small, out, r18_states[0], r18_states["last"]), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    header, rows = read_csv(out / "cka.csv")
    assert header == ["stage_a", "layer1", "layer2", "layer3", "layer4"]
    assert [row[0] for row in rows] == ["layer1", "layer2", "layer3", "layer4"]
    m = np.array([[float(v) for v in row[1:]] for row in rows])
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    np.testing.assert_allclose(m, m.T, atol=1e-6)  # the same model on both sides
    assert (out / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "cka.json").read_text())
    n = VAL_PER_CLASS * NUM_CLASSES  # the whole val split, in batches of 8
    assert summary["images"] == n and summary["batches"] == -(-n // 8)


def test_tool_two_models_pooled(shapes_small, r18_states, tmp_path):
    out = tmp_path / "two"
    r = run_tool(*cka_args(shapes_small, out, r18_states[0], r18_states[1], "--pool", "--max-images", "20"),
                 timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _, rows = read_csv(out / "cka.csv")
    m = np.array([[float(v) for v in row[1:]] for row in rows])
    assert m.shape == (4, 4) and np.isfinite(m).all()
    assert np.diag(m).max() < 0.999  # two different initialisations are not the same representation
    summary = json.loads((out / "cka.json").read_text())
    assert summary["images"] == 20 and summary["features"] == "pooled"


def test_tool_user_errors(shapes_small, r18_states, tmp_path):
    r = run_main(*cka_args(shapes_small, tmp_path / "x", r18_states[0], r18_states[1], model_a="resnet34"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error:") and "does not fit" in err[-1] and "checkpoint-a" in err[-1]
    r = run_main("tools/cka.py", "--data-dir", str(shapes_small["classification"]), "--model-a", "resnet18",
                 "--model-b", "resnet18", "--checkpoint-b", str(r18_states[1]), "--out", str(tmp_path / "y"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and "--pretrained" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
