"""Contrastive representation distillation (CRD, Tian et al. ICLR 2020), as in the official CRD/VanillaKD code.

Pooled pre-logit features -> Linear -> L2-normalise, 128-d, one embedding per side (v_s, v_t). Two memory
banks of N x 128 (N = training-set size): ``memory_s`` holds past student embeddings, ``memory_t`` past
teacher embeddings. For each sample i with K negatives j_1..j_K:

    P_t(i, j) = exp(<memory_s[j], v_t(i)> / T) / Z_t     P_s(i, j) = exp(<memory_t[j], v_s(i)> / T) / Z_s
    NCE(P) = -1/B sum_i [ log P(i, i) / (P(i, i) + K/N) + sum_k log (K/N) / (P(i, j_k) + K/N) ]
    loss = NCE(P_s) + NCE(P_t)

(eps = 1e-7 in the denominators as in the official code), T = 0.07, K = 16384. Z_s, Z_t are the official
Monte-Carlo estimates ``mean(exp(.)) * N`` taken once, on the first batch, and kept fixed afterwards. After
scoring, the banks move towards the batch: ``memory[i] = normalise(0.5 * memory[i] + 0.5 * v(i))``.

Deviations and choices:
- Negatives are drawn uniformly with replacement from all N samples except the anchor itself (the
  official ImageNet dataset draws them from the other classes; the loss sees no dataset labels here).
  With N <= K, with-replacement sampling simply repeats samples.
- A sample index repeated inside one update (possible with repeated augmentation or across ranks) is
  updated once, from its last occurrence in (rank 0's batch, rank 1's batch, ...) order -- what the
  official ``index_copy_`` does on CPU, but deterministic on every device.
- Under torch.distributed (world size > 1) the (index, v_s, v_t) of all ranks are all-gathered before the
  update and Z is estimated over all ranks' first batches, so every rank's bank stays identical. The banks
  are plain tensor attributes, not buffers, so DDP never broadcasts 2 x N x 128 floats per step; they are
  saved through ``get_extra_state`` (tensors only: ``torch.load(weights_only=True)`` works) and follow
  the embeddings' device lazily. Their initial values come from a fixed-seed generator so all ranks start equal.
- The banks move only in training mode (``.eval()`` freezes them), so evaluation passes leave no trace.
- The scoring runs in float32 with autocast off: exp(1/0.07) overflows float16.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..features import Features, FeatureShapes
from .hint import HintLoss
from .registry import register_loss


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (rows may differ in count per rank) over ranks, in rank order."""
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(c) for c in sizes]
    pad = x.new_zeros((max(counts), *x.shape[1:]))
    pad[: x.shape[0]] = x
    out = [torch.zeros_like(pad) for _ in counts]
    dist.all_gather(out, pad)
    return torch.cat([o[:c] for o, c in zip(out, counts)])


def nce_loss(x: torch.Tensor, num_samples: int, eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE objective on normalised scores ``x`` (B, K + 1); column 0 is the positive."""
    m = x.shape[1] - 1
    mpn = m / float(num_samples)
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + mpn + eps))
    log_d0 = torch.log(mpn / (x[:, 1:] + mpn + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


class _Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).to(self.linear.weight.dtype)
        return F.normalize(self.linear(x).float(), p=2, dim=1)


@register_loss("crd")
class CRDLoss(HintLoss):
    needs_index = True

    def __init__(self, feat_dim: int = 128, num_negatives: int = 16384, temperature: float = 0.07,
                 momentum: float = 0.5, bank_seed: int = 0):
        super().__init__()
        self.feat_dim, self.num_negatives = feat_dim, num_negatives
        self.temperature, self.momentum, self.bank_seed = temperature, momentum, bank_seed
        self.num_samples = 0
        self.embed_s: _Embed | None = None
        self.embed_t: _Embed | None = None
        # plain attributes on purpose (see module docstring): DDP must not broadcast them
        self.memory_s: torch.Tensor | None = None
        self.memory_t: torch.Tensor | None = None
        self.z = [-1.0, -1.0]  # (Z_s, Z_t); negative = not estimated yet

    def setup(self, student: FeatureShapes, teacher: FeatureShapes, num_samples: int) -> None:
        """Embeddings to ``feat_dim`` and the two N x feat_dim banks (official uniform init)."""
        self.num_samples = int(num_samples)
        self.embed_s = _Embed(student.pre_logits, self.feat_dim)
        self.embed_t = _Embed(teacher.pre_logits, self.feat_dim)
        g = torch.Generator().manual_seed(self.bank_seed)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.memory_s = torch.rand(num_samples, self.feat_dim, generator=g).mul_(2 * stdv).add_(-stdv)
        self.memory_t = torch.rand(num_samples, self.feat_dim, generator=g).mul_(2 * stdv).add_(-stdv)
        self.z = [-1.0, -1.0]

    # ---- state: banks and Z travel in the state_dict as extra state, never as buffers
    def get_extra_state(self) -> dict[str, torch.Tensor]:
        if self.memory_s is None:
            return {}
        return {"memory_s": self.memory_s, "memory_t": self.memory_t,
                "z": torch.tensor(self.z, dtype=torch.float64)}

    def set_extra_state(self, state: Any) -> None:
        if not state:
            return
        if self.memory_s is not None and state["memory_s"].shape != self.memory_s.shape:
            raise ValueError(f"CRD memory of shape {tuple(state['memory_s'].shape)} does not fit "
                             f"{tuple(self.memory_s.shape)} (another dataset size?)")
        dev = self.embed_s.linear.weight.device if self.embed_s is not None else torch.device("cpu")
        self.memory_s = state["memory_s"].detach().to(dev, torch.float32).clone()
        self.memory_t = state["memory_t"].detach().to(dev, torch.float32).clone()
        self.z = [float(v) for v in state["z"].tolist()]
        self.num_samples = self.memory_s.shape[0]

    # ---- the method
    def sample_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K) uniform indices, with replacement, never the anchor itself (unless N == 1)."""
        n, k = self.num_samples, self.num_negatives
        if n <= 1:
            return torch.zeros(index.shape[0], k, dtype=torch.long, device=index.device)
        neg = torch.randint(0, n - 1, (index.shape[0], k), device=index.device)
        return neg + (neg >= index.unsqueeze(1)).long()

    def _follow_device(self, device: torch.device) -> None:
        if self.memory_s.device != device:
            self.memory_s = self.memory_s.to(device)
            self.memory_t = self.memory_t.to(device)

    def _estimate_z(self, out_s: torch.Tensor, out_t: torch.Tensor) -> None:
        stats = torch.stack([out_s.double().sum(), out_t.double().sum(),
                             out_s.new_tensor(out_s.numel(), dtype=torch.float64),
                             out_t.new_tensor(out_t.numel(), dtype=torch.float64)])
        if _distributed():
            dist.all_reduce(stats)
        for side, (tot, cnt) in enumerate(((stats[0], stats[2]), (stats[1], stats[3]))):
            if self.z[side] < 0:
                self.z[side] = float(tot / cnt) * self.num_samples

    @torch.no_grad()
    def update_memory(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Momentum update of both banks at ``index``; gathered over ranks first under torch.distributed."""
        if _distributed():
            index, v_s, v_t = _all_gather_rows(index), _all_gather_rows(v_s), _all_gather_rows(v_t)
        uniq, inv = torch.unique(index, return_inverse=True)
        pos = torch.arange(index.shape[0], device=index.device)
        last = torch.full((uniq.shape[0],), -1, dtype=torch.long, device=index.device)
        last = last.scatter_reduce(0, inv, pos, reduce="amax")
        for mem, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            upd = mem[uniq] * self.momentum + v[last] * (1 - self.momentum)
            mem[uniq] = upd / upd.norm(dim=1, keepdim=True)

    def forward(self, s: Features, t: Features, target: torch.Tensor, index: torch.Tensor | None = None,
                *, neg_index: torch.Tensor | None = None) -> torch.Tensor:
        """``neg_index`` (B, K) overrides the sampled negatives (tests, reproducibility)."""
        if self.embed_s is None or self.memory_s is None:
            raise RuntimeError("CRDLoss.setup() must run before forward()")
        if index is None:
            raise ValueError("CRD needs the dataset indices of the batch (index=...)")
        dev = self.embed_s.linear.weight.device
        index = index.to(dev).long()
        self._follow_device(dev)
        with torch.autocast(device_type=dev.type, enabled=False):
            v_s = self.embed_s(s.pre_logits)
            v_t = self.embed_t(t.pre_logits)
            neg = self.sample_negatives(index) if neg_index is None else neg_index.to(dev).long()
            idx = torch.cat([index.unsqueeze(1), neg], dim=1)                   # (B, K + 1)
            w_s = self.memory_s[idx]                                            # (B, K + 1, D), no grad
            w_t = self.memory_t[idx]
            out_t = torch.exp(torch.bmm(w_s, v_t.unsqueeze(2)).squeeze(2) / self.temperature)
            out_s = torch.exp(torch.bmm(w_t, v_s.unsqueeze(2)).squeeze(2) / self.temperature)
            if self.z[0] < 0 or self.z[1] < 0:
                self._estimate_z(out_s.detach(), out_t.detach())
            loss = nce_loss(out_s / self.z[0], self.num_samples) + nce_loss(out_t / self.z[1], self.num_samples)
            if self.training:  # evaluation passes must not move the banks
                self.update_memory(index, v_s.detach(), v_t.detach())
        return loss
