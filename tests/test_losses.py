"""Each logit loss against an independent numpy implementation of its paper's formula."""
import numpy as np
import pytest
import torch

from common.io import UserError
from distill.losses import build_loss, list_losses


def softmax(z, T=1.0):
    z = z / T
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ref_kd(zs, zt, T):
    ps, pt = softmax(zs, T), softmax(zt, T)
    return T * T * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), 1))


def ref_bkd(zs, zt):
    p = softmax(zt)
    sig = 1 / (1 + np.exp(-zs))
    return np.mean(-(p * np.log(sig) + (1 - p) * np.log(1 - sig)))


def ref_dkd(zs, zt, y, alpha, beta, T):
    n, c = zs.shape
    ps, pt = softmax(zs, T), softmax(zt, T)
    tckd = nckd = 0.0
    for i in range(n):
        bs = np.array([ps[i, y[i]], 1 - ps[i, y[i]]])
        bt = np.array([pt[i, y[i]], 1 - pt[i, y[i]]])
        tckd += np.sum(bt * np.log(bt / bs))
        mask = np.arange(c) != y[i]
        qs = ps[i, mask] / ps[i, mask].sum()
        qt = pt[i, mask] / pt[i, mask].sum()
        nckd += np.sum(qt * np.log(qt / qs))
    return T * T * (alpha * tckd + beta * nckd) / n


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())


def ref_dist(zs, zt, beta, gamma, tau):
    ys, yt = softmax(zs, tau), softmax(zt, tau)
    inter = 1 - np.mean([pearson(ys[i], yt[i]) for i in range(len(ys))])
    intra = 1 - np.mean([pearson(ys[:, j], yt[:, j]) for j in range(ys.shape[1])])
    return tau * tau * (beta * inter + gamma * intra)


def ref_lskd(zs, zt, T):
    """Sun et al. 2024: KD on per-sample z-scored logits (std with K - 1, as their released code)."""
    def z(a):
        return (a - a.mean(1, keepdims=True)) / (a.std(1, ddof=1, keepdims=True) + 1e-7)
    return ref_kd(z(zs), z(zt), T)


CASES = [(4, 5), (16, 10), (7, 100)]


def logits(n, c, seed):
    rng = np.random.RandomState(seed)
    return rng.randn(n, c) * 3, rng.randn(n, c) * 3, rng.randint(0, c, n)


@pytest.mark.parametrize("n,c", CASES)
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd(n, c, T):
    zs, zt, y = logits(n, c, 0)
    got = build_loss("kd", temperature=T)(torch.tensor(zs), torch.tensor(zt), torch.tensor(y))
    assert got.item() == pytest.approx(ref_kd(zs, zt, T), rel=1e-5)


@pytest.mark.parametrize("n,c", CASES)
def test_bkd(n, c):
    zs, zt, y = logits(n, c, 1)
    got = build_loss("bkd")(torch.tensor(zs), torch.tensor(zt), torch.tensor(y))
    assert got.item() == pytest.approx(ref_bkd(zs, zt), rel=1e-5)


@pytest.mark.parametrize("n,c", CASES)
@pytest.mark.parametrize("T,alpha,beta", [(1.0, 1.0, 2.0), (4.0, 1.0, 8.0), (2.0, 0.5, 1.0)])
def test_dkd(n, c, T, alpha, beta):
    zs, zt, y = logits(n, c, 2)
    got = build_loss("dkd", alpha=alpha, beta=beta, temperature=T)(torch.tensor(zs), torch.tensor(zt), torch.tensor(y))
    assert got.item() == pytest.approx(ref_dkd(zs, zt, y, alpha, beta, T), rel=1e-4)


def test_dkd_soft_target_takes_argmax():
    zs, zt, y = logits(8, 6, 3)
    soft = np.eye(6)[y] * 0.7 + 0.3 / 6
    loss = build_loss("dkd")
    a = loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y))
    b = loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(soft))
    assert a.item() == pytest.approx(b.item())


@pytest.mark.parametrize("n,c", CASES)
@pytest.mark.parametrize("tau,beta,gamma", [(1.0, 1.0, 1.0), (2.0, 2.0, 1.0), (4.0, 1.0, 2.0)])
def test_dist(n, c, tau, beta, gamma):
    zs, zt, y = logits(n, c, 4)
    got = build_loss("dist", beta=beta, gamma=gamma, temperature=tau)(torch.tensor(zs), torch.tensor(zt))
    assert got.item() == pytest.approx(ref_dist(zs, zt, beta, gamma, tau), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("n,c", CASES)
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_lskd(n, c, T):
    zs, zt, y = logits(n, c, 5)
    got = build_loss("lskd", temperature=T)(torch.tensor(zs), torch.tensor(zt), torch.tensor(y))
    assert got.item() == pytest.approx(ref_lskd(zs, zt, T), rel=1e-5)


def test_lskd_ignores_logit_scale_and_shift_unlike_kd():
    """The point of standardisation: a teacher whose logits are 3 z + 5 teaches as z does; KD sees a change."""
    zs, zt, _ = (torch.tensor(a) for a in logits(6, 9, 6))
    lskd, kd = build_loss("lskd"), build_loss("kd")
    assert lskd(zs, 3 * zt + 5).item() == pytest.approx(lskd(zs, zt).item(), rel=1e-6)
    assert abs(kd(zs, 3 * zt + 5).item() - kd(zs, zt).item()) > 1e-2


def test_lskd_fixed_value():
    """A fixed reference value, torchdistill-style: logits [[1, 2, 3]] vs [[3, 1, 0]], T = 1 (z-scores
    [-1, 0, 1] and [1.091, -0.218, -0.873], worked by hand)."""
    got = build_loss("lskd")(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 1.0, 0.0]]))
    assert got.item() == pytest.approx(1.227328, rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_has_gradients():
    z = torch.randn(4, 7, requires_grad=True)
    assert build_loss("kd")(z, z.detach()).item() == pytest.approx(0, abs=1e-6)
    zs = torch.randn(4, 7, requires_grad=True)
    build_loss("kd", temperature=2.0)(zs, torch.randn(4, 7)).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0


def test_registry_names_and_errors():
    assert {"kd", "bkd", "dkd", "dist", "lskd"} <= set(list_losses())
    with pytest.raises(UserError, match="unknown KD loss"):
        build_loss("nope")
    with pytest.raises(UserError, match="bad hyper-parameter"):
        build_loss("kd", tau=3)
