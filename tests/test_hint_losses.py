"""The hint-based losses (cc, rkd, crd, review) against independent numpy implementations of their formulas,
computed with the helper weights read out of the module; plus defaults, a real timm training step, state_dict
round-trips, ReviewKD warm-up, and CRD's memory bank staying identical across 2 real gloo processes."""
import io

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill.losses import build_loss, list_losses
from distill.features import Features, FeatureShapes
from distill.losses.hint import HintLoss


def npy(t):
    return t.detach().double().numpy()


def feats(pre, stages=None):
    return Features(logits=None, pre_logits=pre, stages=stages)


def l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- numpy references
def ref_cc(xs, xt, ws, bs, wt, bt, scale=0.02):
    d = np.abs((xs @ ws.T + bs) - (xt @ wt.T + bt))
    return scale * np.mean([np.sum(d[i] * d[i + 1]) for i in range(len(d) - 1)])


def smooth_l1(a, b):
    x = np.abs(a - b)
    return np.mean(np.where(x < 1, 0.5 * x * x, x - 0.5))


def ref_rkd(s, t, wd=25.0, wa=50.0):
    def dist_n(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[~np.eye(n, dtype=bool)].mean()

    def angles(e):
        n = len(e)
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    a[i, j, k] = u @ v / (nu * nv) if nu > 0 and nv > 0 else 0.0
        return a

    return wd * smooth_l1(dist_n(s), dist_n(t)) + wa * smooth_l1(angles(s), angles(t))


def ref_crd(vs, vt, mem_s, mem_t, index, neg, n_data, T=0.07, z=None, momentum=0.5):
    """Loss, (Z_s, Z_t) and the updated banks; duplicates: each update reads the old bank, the last write wins."""
    idx = np.concatenate([index[:, None], neg], 1)
    out_t = np.exp(np.einsum("bkd,bd->bk", mem_s[idx], vt) / T)
    out_s = np.exp(np.einsum("bkd,bd->bk", mem_t[idx], vs) / T)
    if z is None:
        z = (out_s.mean() * n_data, out_t.mean() * n_data)

    def nce(p):
        c = (p.shape[1] - 1) / n_data
        return -(np.sum(np.log(p[:, 0] / (p[:, 0] + c + 1e-7))) + np.sum(np.log(c / (p[:, 1:] + c + 1e-7)))) / len(p)

    loss = nce(out_s / z[0]) + nce(out_t / z[1])
    new_s, new_t = mem_s.copy(), mem_t.copy()
    for p, i in enumerate(index):
        new_s[i] = l2n(momentum * mem_s[i] + (1 - momentum) * vs[p])
        new_t[i] = l2n(momentum * mem_t[i] + (1 - momentum) * vt[p])
    return loss, z, new_s, new_t


def np_nearest(x, hw):
    h, w = x.shape[2:]
    ri = np.floor(np.arange(hw[0]) * h / hw[0]).astype(int)
    ci = np.floor(np.arange(hw[1]) * w / hw[1]).astype(int)
    return x[:, :, ri][:, :, :, ci]


def np_bn_train(x, gamma, beta, eps=1e-5):
    m = x.mean((0, 2, 3), keepdims=True)
    v = x.var((0, 2, 3), keepdims=True)
    return (x - m) / np.sqrt(v + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def np_conv(x, w, b=None):
    """Stride-1 'same' convolution (1x1 or 3x3)."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = x.shape[2:]
    out = sum(np.einsum("oc,bchw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
              for dy in range(k) for dx in range(k))
    return out if b is None else out + b[None, :, None, None]


def np_adaptive_pool(x, lvl):
    h, w = x.shape[2:]
    out = np.zeros(x.shape[:2] + (lvl, lvl))
    for i in range(lvl):
        for j in range(lvl):
            r0, r1 = (i * h) // lvl, -((-(i + 1) * h) // lvl)
            c0, c1 = (j * w) // lvl, -((-(j + 1) * w) // lvl)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean((2, 3))
    return out


def ref_hcl(fs_list, ft_list):
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        loss, cnt, tot = np.mean((fs - ft) ** 2), 1.0, 1.0
        for lvl in (4, 2, 1):
            if lvl >= fs.shape[2]:
                continue
            cnt /= 2
            loss += np.mean((np_adaptive_pool(fs, lvl) - np_adaptive_pool(ft, lvl)) ** 2) * cnt
            tot += cnt
        total += loss / tot
    return total


def ref_review(s_levels, t_levels, module):
    """ABF chain (deepest first) + HCL in numpy, with the module's conv/BN weights (BN in training mode)."""
    res, outs = None, []
    for x, ft, abf in zip(s_levels[::-1], t_levels[::-1], module.abfs):
        n, _, h, w = x.shape
        x = np_bn_train(np_conv(x, npy(abf.conv1[0].weight)), npy(abf.conv1[1].weight), npy(abf.conv1[1].bias))
        if abf.att_conv is not None:
            res = np_nearest(res, (h, w))
            z = np_conv(np.concatenate([x, res], 1), npy(abf.att_conv[0].weight), npy(abf.att_conv[0].bias))
            z = 1 / (1 + np.exp(-z))
            x = x * z[:, :1] + res * z[:, 1:2]
        if x.shape[2:] != ft.shape[2:]:
            x = np_nearest(x, ft.shape[2:])
        outs.append(np_bn_train(np_conv(x, npy(abf.conv2[0].weight)), npy(abf.conv2[1].weight),
                                npy(abf.conv2[1].bias)))
        res = x
    return ref_hcl(outs, t_levels[::-1])


# ----------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("b,ds,dt", [(4, 8, 12), (7, 16, 6), (2, 5, 5)])
def test_cc(b, ds, dt):
    torch.manual_seed(b)
    loss = build_loss("cc")
    loss.setup(FeatureShapes(ds, []), FeatureShapes(dt, []), num_samples=10)
    xs, xt = torch.randn(b, ds), torch.randn(b, dt) * 2
    got = loss(feats(xs), feats(xt), None)
    want = ref_cc(npy(xs), npy(xt), npy(loss.embed_s.weight), npy(loss.embed_s.bias),
                  npy(loss.embed_t.weight), npy(loss.embed_t.bias))
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("b,ds,dt", [(5, 8, 12), (8, 3, 20)])
def test_rkd(b, ds, dt):
    torch.manual_seed(b)
    xs, xt = torch.randn(b, ds), torch.randn(b, dt) * 3
    got = build_loss("rkd")(feats(xs), feats(xt), None)
    assert got.item() == pytest.approx(ref_rkd(npy(xs), npy(xt)), rel=1e-5)
    # different weights reach the right terms
    got_d = build_loss("rkd", angle_weight=0.0)(feats(xs), feats(xt), None)
    assert got_d.item() == pytest.approx(ref_rkd(npy(xs), npy(xt), wa=0.0), rel=1e-5)


@pytest.mark.parametrize("b,ds,dt,n,k", [(4, 8, 12, 20, 6), (6, 5, 7, 9, 16)])
def test_crd_against_reference(b, ds, dt, n, k):
    torch.manual_seed(b)
    loss = build_loss("crd", num_negatives=k)
    loss.setup(FeatureShapes(ds, []), FeatureShapes(dt, []), num_samples=n)
    # controlled bank contents (normalised, as after training)
    loss.memory_s = torch.nn.functional.normalize(torch.randn(n, 128), dim=1)
    loss.memory_t = torch.nn.functional.normalize(torch.randn(n, 128), dim=1)
    mem_s, mem_t = npy(loss.memory_s), npy(loss.memory_t)
    z = None
    for step in range(2):  # step 1 must reuse the Z of step 0
        xs, xt = torch.randn(b, ds), torch.randn(b, dt)
        index = torch.randint(0, n, (b,))
        index[-1] = index[0]  # a repeated sample index in the batch
        neg = torch.randint(0, n, (b, k))
        vs = l2n(npy(xs) @ npy(loss.embed_s.linear.weight).T + npy(loss.embed_s.linear.bias))
        vt = l2n(npy(xt) @ npy(loss.embed_t.linear.weight).T + npy(loss.embed_t.linear.bias))
        want, z, mem_s, mem_t = ref_crd(vs, vt, mem_s, mem_t, index.numpy(), neg.numpy(), n, z=z)
        got = loss(feats(xs), feats(xt), None, index=index, neg_index=neg)
        assert got.item() == pytest.approx(want, rel=1e-4)
        assert loss.z == pytest.approx(list(z), rel=1e-5)
        np.testing.assert_allclose(npy(loss.memory_s), mem_s, atol=1e-6)
        np.testing.assert_allclose(npy(loss.memory_t), mem_t, atol=1e-6)


def test_crd_negatives_with_replacement_never_the_anchor():
    loss = build_loss("crd")
    loss.setup(FeatureShapes(4, []), FeatureShapes(4, []), num_samples=5)
    index = torch.tensor([0, 2, 4, 2])
    neg = loss.sample_negatives(index)
    assert neg.shape == (4, 16384) and neg.min() >= 0 and neg.max() < 5
    assert not (neg == index[:, None]).any()
    assert all(set(neg[r].tolist()) == set(range(5)) - {int(index[r])} for r in range(4))


def test_crd_bank_frozen_in_eval_and_not_a_buffer():
    loss = build_loss("crd", num_negatives=4)
    loss.setup(FeatureShapes(4, []), FeatureShapes(6, []), num_samples=8)
    assert not list(loss.named_buffers())
    before = loss.memory_s.clone()
    loss.eval()
    loss(feats(torch.randn(3, 4)), feats(torch.randn(3, 6)), None, index=torch.tensor([1, 2, 3]))
    assert torch.equal(before, loss.memory_s)
    loss.train()
    loss(feats(torch.randn(3, 4)), feats(torch.randn(3, 6)), None, index=torch.tensor([1, 2, 3]))
    assert not torch.equal(before[1:4], loss.memory_s[1:4]) and torch.equal(before[4:], loss.memory_s[4:])


REVIEW_CASES = {
    # student (C, H, W) per stage, D_s; teacher per stage, D_t; mid_channel
    "same-res": ([(4, 8, 8), (6, 4, 4), (8, 2, 2), (10, 1, 1)], 10,
                 [(5, 8, 8), (7, 4, 4), (9, 2, 2), (12, 1, 1)], 12, None),
    "teacher-2x-res": ([(4, 8, 8), (6, 4, 4), (8, 2, 2), (10, 1, 1)], 10,
                       [(5, 16, 16), (7, 8, 8), (9, 4, 4), (12, 2, 2)], 12, None),
    "vit-like-teacher": ([(4, 8, 8), (6, 4, 4), (8, 2, 2), (10, 1, 1)], 10,
                         [(6, 4, 4)] * 4, 6, 3),
}


@pytest.mark.parametrize("case", sorted(REVIEW_CASES))
def test_review(case):
    s_shapes, ds, t_shapes, dt, mid = REVIEW_CASES[case]
    torch.manual_seed(0)
    loss = build_loss("review", mid_channel=mid)
    loss.setup(FeatureShapes(ds, s_shapes), FeatureShapes(dt, t_shapes), num_samples=10)
    assert loss.abfs[-1].conv1[0].out_channels == (mid or min(512, ds))
    with torch.no_grad():  # non-trivial BN affine parameters
        for p in loss.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    b = 3
    s_st, t_st = [torch.randn(b, *c) for c in s_shapes], [torch.randn(b, *c) for c in t_shapes]
    xs, xt = torch.randn(b, ds), torch.randn(b, dt)
    loss.set_progress(0.5)
    got = loss(feats(xs, s_st), feats(xt, t_st), None)
    s_lv = [npy(x) for x in s_st] + [npy(xs)[:, :, None, None]]
    t_lv = [npy(x) for x in t_st] + [npy(xt)[:, :, None, None]]
    assert got.item() == pytest.approx(0.5 * ref_review(s_lv, t_lv, loss), rel=1e-4)


def test_review_warmup_first_step_nonzero():
    torch.manual_seed(0)
    loss = build_loss("review")
    loss.setup(FeatureShapes(8, [(4, 4, 4)] * 4), FeatureShapes(8, [(4, 4, 4)] * 4), num_samples=10)
    s = feats(torch.randn(2, 8), [torch.randn(2, 4, 4, 4) for _ in range(4)])
    t = feats(torch.randn(2, 8), [torch.randn(2, 4, 4, 4) for _ in range(4)])
    loss.set_progress(0.1)  # engine: epoch 0, step 0 of 10
    first = loss(s, t, None)
    loss.set_progress(2.5)
    full = loss(s, t, None)
    assert first.item() > 0 and first.item() == pytest.approx(0.1 * full.item(), rel=1e-5)
    assert loss.progress == 2.5


# ----------------------------------------------------------------------------- registry / defaults
def test_defaults_and_flags():
    assert {"cc", "crd", "rkd", "review"} <= set(list_losses())
    cc, rkd, crd, rev = (build_loss(n) for n in ("cc", "rkd", "crd", "review"))
    assert (cc.feat_dim, cc.scale) == (128, 0.02)
    assert (rkd.distance_weight, rkd.angle_weight, rkd.squared) == (25.0, 50.0, False)
    assert (crd.feat_dim, crd.num_negatives, crd.temperature, crd.momentum) == (128, 16384, 0.07, 0.5)
    assert (rev.mid_channel, rev.max_mid_channel, rev.warmup_epochs, rev.loss_weight) == (None, 512, 1.0, 1.0)
    for loss in (cc, rkd, crd, rev):
        assert isinstance(loss, HintLoss) and not loss.is_logit_loss
    assert [m.needs_stages for m in (cc, rkd, crd, rev)] == [False, False, False, True]
    assert [m.needs_index for m in (cc, rkd, crd, rev)] == [False, False, True, False]
    rev.setup(FeatureShapes(2048, [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]),
              FeatureShapes(2048, [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]), 10)
    assert {a.conv1[0].out_channels for a in rev.abfs} == {512}  # official: min(512, D_s) for ResNet-50


# ----------------------------------------------------------------------------- real timm models
def _timm_features(model, x):
    final, inter = model.forward_intermediates(x, indices=4)
    pre = model.forward_head(final, pre_logits=True)
    return Features(logits=model.get_classifier()(pre), pre_logits=pre, stages=list(inter))


def _shapes(f):
    return FeatureShapes(f.pre_logits.shape[1], [tuple(m.shape[1:]) for m in f.stages])


@pytest.fixture(scope="module")
def timm_pair():
    import timm
    torch.manual_seed(0)
    student = timm.create_model("resnet10t", num_classes=5)
    teacher = timm.create_model("resnet18", num_classes=5).eval()
    xs = torch.randn(4, 3, 32, 32)
    xt = torch.nn.functional.interpolate(xs, size=64, mode="bilinear")  # teacher at another resolution
    with torch.no_grad():
        t = _timm_features(teacher, xt)
    return student, t, xs


@pytest.mark.parametrize("name", ["cc", "rkd", "crd", "review"])
def test_training_step_reaches_student_and_helpers(name, timm_pair):
    student, t, xs = timm_pair
    student.zero_grad()
    s = _timm_features(student, xs)
    loss = build_loss(name)
    loss.setup(_shapes(s), _shapes(t), num_samples=10)
    loss.set_progress(0.25)
    index = torch.tensor([0, 3, 3, 9]) if loss.needs_index else None
    s_in = s if loss.needs_stages else Features(s.logits, s.pre_logits, None)
    t_in = t if loss.needs_stages else Features(t.logits, t.pre_logits, None)
    value = loss(s_in, t_in, torch.tensor([0, 1, 2, 3]), index=index)
    assert value.ndim == 0 and torch.isfinite(value) and value.item() > 0
    value.backward()
    stem = next(student.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    helpers = list(loss.named_parameters())
    assert bool(helpers) == (name != "rkd")
    for pname, p in helpers:
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["cc", "crd", "review"])
def test_state_dict_round_trip(name, timm_pair):
    student, t, xs = timm_pair
    with torch.no_grad():
        s = _timm_features(student, xs)
    index = torch.tensor([1, 2, 5, 5])
    loss = build_loss(name, num_negatives=32) if name == "crd" else build_loss(name)
    loss.setup(_shapes(s), _shapes(t), num_samples=10)
    loss.set_progress(1.0)
    loss(s, t, None, index=index)  # moves CRD's bank and sets Z
    buf = io.BytesIO()
    torch.save(loss.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    torch.manual_seed(123)  # fresh helpers differ from the saved ones ...
    fresh = build_loss(name, num_negatives=32) if name == "crd" else build_loss(name)
    fresh.setup(_shapes(s), _shapes(t), num_samples=10)
    fresh.load_state_dict(state)  # ... until loaded
    for (k, a), (k2, b) in zip(loss.state_dict().items(), fresh.state_dict().items()):
        assert k == k2
        if isinstance(a, dict):  # CRD extra state
            assert a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a)
        else:
            assert torch.equal(a, b), k
    if name == "crd":
        assert torch.equal(loss.memory_s, fresh.memory_s) and torch.equal(loss.memory_t, fresh.memory_t)
        assert loss.z == fresh.z and loss.z[0] > 0
        neg = torch.randint(0, 10, (4, 32))
        fresh.set_progress(1.0)
        assert loss(s, t, None, index=index, neg_index=neg).item() == pytest.approx(
            fresh(s, t, None, index=index, neg_index=neg).item(), rel=1e-6)
        assert torch.equal(loss.memory_s, fresh.memory_s)


# ----------------------------------------------------------------------------- CRD under torch.distributed
DDP_N, DDP_K, DDP_STEPS = 12, 5, 3


def _ddp_batch(step, rank):
    """Rank-specific batches of different sizes, overlapping in their sample indices."""
    g = torch.Generator().manual_seed(100 * step + rank)
    b = 4 if rank == 0 else 3
    index = torch.randint(0, DDP_N, (b,), generator=g)
    index[0] = 7  # the same sample on both ranks: rank 1's copy must win everywhere
    return (torch.randn(b, 6, generator=g), torch.randn(b, 8, generator=g), index,
            torch.randint(0, DDP_N, (b, DDP_K), generator=g))


def _ddp_crd():
    torch.manual_seed(0)
    loss = build_loss("crd", num_negatives=DDP_K)
    loss.setup(FeatureShapes(6, []), FeatureShapes(8, []), num_samples=DDP_N)
    return loss


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loss = _ddp_crd()
        for step in range(DDP_STEPS):
            xs, xt, index, neg = _ddp_batch(step, rank)
            loss(feats(xs), feats(xt), None, index=index, neg_index=neg)
        torch.save({"s": loss.memory_s, "t": loss.memory_t, "z": torch.tensor(loss.z)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_crd_bank_identical_across_two_gloo_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("s", "t", "z"):
        assert torch.equal(r0[key], r1[key]), key

    single = _ddp_crd()  # one process over the concatenated (rank 0, rank 1) batches
    for step in range(DDP_STEPS):
        b0, b1 = _ddp_batch(step, 0), _ddp_batch(step, 1)
        xs, xt, index, neg = (torch.cat([a, b]) for a, b in zip(b0, b1))
        single(feats(xs), feats(xt), None, index=index, neg_index=neg)
    torch.testing.assert_close(r0["s"], single.memory_s, atol=1e-6, rtol=0)
    torch.testing.assert_close(r0["t"], single.memory_t, atol=1e-6, rtol=0)
    torch.testing.assert_close(r0["z"], torch.tensor(single.z), rtol=1e-6, atol=0)
    assert not torch.equal(single.memory_s, _ddp_crd().memory_s)  # the banks did move
