"""Linear CKA (Kornblith et al. 2019) between representations, exact and accumulated over minibatches.

Why two forms:

- ``linear_cka(X, Y)`` is the exact (biased-HSIC) linear CKA of two full matrices of ``n`` samples. It picks
  the cheaper of the two equivalent formulations, the feature-space one (``||Yc^T Xc||_F^2``: ``p x q``
  matrices) or the sample-space one (centred Gram matrices ``Xc Xc^T``: ``n x n``), so that flattened
  stage maps with 10^5 features per sample do not need a ``p x p`` matrix.
- ``MinibatchCKA`` is what a dataset needs: the minibatch estimator of Nguyen, Raghu & Kornblith (2021, "Do
  Wide and Deep Networks Learn the Same Things?"). Each batch contributes the *unbiased* HSIC (Song et al.
  2012) of its ``b x b`` Gram matrices; CKA is the ratio of the batch averages. Memory is ``O(b^2)`` per
  stage, independent of the feature size and of the number of images, and the unbiased HSIC makes the
  result (nearly) independent of the batch size, which the biased HSIC of small batches is not.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _as_matrix(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) -> (n, features), computed in float64 (CKA ratios of large sums lose digits in float32)."""
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], -1).to(torch.float64)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact linear CKA of X (n, p...) and Y (n, q...): HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T.

    Invariant to orthogonal transforms and isotropic scaling of either side; CKA(X, X) = 1.
    """
    x, y = _as_matrix(x), _as_matrix(y)
    n, p = x.shape
    if y.shape[0] != n:
        raise ValueError(f"X has {n} samples but Y has {y.shape[0]}")
    q = y.shape[1]
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    if 2 * n * n <= p * q + p * p + q * q:  # sample space: two n x n Gram matrices
        k, lm = x @ x.T, y @ y.T
        xy, xx, yy = (k * lm).sum(), (k * k).sum(), (lm * lm).sum()
    else:  # feature space: ||Y^T X||^2, ||X^T X||^2, ||Y^T Y||^2 (the same numbers, smaller matrices)
        xy = (y.T @ x).square().sum()
        xx = (x.T @ x).square().sum()
        yy = (y.T @ y).square().sum()
    denom = torch.sqrt(xx * yy)
    return float(xy / denom) if denom > 0 else float("nan")


def gram(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix X X^T of a batch (b, ...), in float64."""
    x = torch.as_tensor(x)
    x = x.reshape(x.shape[0], -1)
    g = x @ x.T  # in the features' own dtype and device: the big product stays on the accelerator
    return g.to(torch.float64)


def hsic_unbiased(k: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator of Song et al. (2012) for two n x n Gram matrices (n >= 4).

    HSIC_1 = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K with zero diagonal.
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 samples, got {n}")
    k = k - torch.diag(torch.diagonal(k))
    lm = lm - torch.diag(torch.diagonal(lm))
    ones_k, ones_l = k.sum(0), lm.sum(0)  # 1'K~ and 1'L~ (symmetric matrices)
    trace = (k * lm).sum()  # tr(K~ L~) for symmetric K~, L~
    middle = ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (ones_k @ ones_l)
    return (trace + middle - last) / (n * (n - 3))


class MinibatchCKA:
    """CKA between every representation of A and every representation of B, accumulated over batches.

    ``update(feats_a, feats_b)`` takes one batch of each side's representations (lists of (b, ...) tensors
    of the same samples); ``compute()`` returns the (len(A), len(B)) CKA matrix. Batches of fewer than 4
    samples cannot give an unbiased HSIC and are skipped (``update`` returns False).
    """

    def __init__(self, num_a: int, num_b: int) -> None:
        self.num_a, self.num_b = num_a, num_b
        self.hsic_ab = torch.zeros(num_a, num_b, dtype=torch.float64)
        self.hsic_aa = torch.zeros(num_a, dtype=torch.float64)
        self.hsic_bb = torch.zeros(num_b, dtype=torch.float64)
        self.num_batches = 0
        self.num_samples = 0
        self.skipped_samples = 0

    @torch.no_grad()
    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor]) -> bool:
        if len(feats_a) != self.num_a or len(feats_b) != self.num_b:
            raise ValueError(f"expected {self.num_a} and {self.num_b} representations, "
                             f"got {len(feats_a)} and {len(feats_b)}")
        n = feats_a[0].shape[0]
        if any(f.shape[0] != n for f in (*feats_a, *feats_b)):
            raise ValueError("all representations of a batch must hold the same samples")
        if n < 4:
            self.skipped_samples += n
            return False
        ka = [gram(f).cpu() for f in feats_a]
        kb = [gram(f).cpu() for f in feats_b]
        for i, k in enumerate(ka):
            self.hsic_aa[i] += hsic_unbiased(k, k)
            for j, lm in enumerate(kb):
                self.hsic_ab[i, j] += hsic_unbiased(k, lm)
        for j, lm in enumerate(kb):
            self.hsic_bb[j] += hsic_unbiased(lm, lm)
        self.num_batches += 1
        self.num_samples += n
        return True

    def compute(self) -> torch.Tensor:
        """The (num_a, num_b) CKA matrix; NaN where a representation is constant over the data."""
        if self.num_batches == 0:
            raise ValueError("no batch of at least 4 samples was seen")
        denom = self.hsic_aa[:, None] * self.hsic_bb[None, :]
        out = torch.full_like(self.hsic_ab, math.nan)
        ok = denom > 0
        out[ok] = self.hsic_ab[ok] / denom[ok].sqrt()
        return out
