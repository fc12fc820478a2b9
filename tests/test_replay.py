"""Sample-mode mixup without a second decode: partners share a per-rank batch, views match across world sizes."""
import pytest
import timm
import torch

from conftest import DISTILL_BASE as BASE
from shapes.generate import NUM_CLASSES

AUG = ["--aa", "rand-m7-mstd0.5", "--reprob", "0.25", "--aug-repeats", "3", "--mixup", "0.8", "--cutmix", "1.0",
       "--mixup-mode", "sample"]
CFG = {"input_size": (3, 32, 32), "mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD,
       "interpolation": "bicubic"}


def _loader(data_dir, world_size: int, rank: int, workers: int = 0, extra=()):
    from distill.args import parse_args
    from distill.data import build_dataset, build_train_loader
    args = parse_args(["--data-dir", str(data_dir), *BASE, *AUG, "--workers", str(workers), *extra])
    ds = build_dataset(args.data_dir, "train", is_training=True)
    return build_train_loader(ds, args, CFG, torch.device("cpu"), rank=rank, world_size=world_size,
                              num_classes=NUM_CLASSES)


def _epoch_views(data_dir, world_size: int, workers: int = 0, epoch: int = 1) -> dict[int, tuple]:
    """{position: (mixed view, soft target, dataset index)} over all ranks; asserts pairs share a batch."""
    from distill.replay import partner
    views = {}
    for rank in range(world_size):
        loader = _loader(data_dir, world_size, rank, workers)
        loader.sampler.set_epoch(epoch)
        for x, y, positions, index, _ in loader:
            batch = set(positions.tolist())
            assert all(partner(p) in batch for p in batch), (world_size, rank, sorted(batch))
            for p, xi, yi, i in zip(positions.tolist(), x, y, index.tolist()):
                assert p not in views  # each position is served by exactly one rank
                views[p] = (xi, yi, i)
    return views


def test_sample_mixup_partner_in_the_same_batch_and_views_equal_across_world_sizes(shapes_small):
    data = shapes_small["classification"]
    ref = _epoch_views(data, 1)
    assert len(ref) >= 32
    for world_size, workers in ((2, 0), (4, 0), (2, 2)):
        other = _epoch_views(data, world_size, workers)
        assert other.keys() == ref.keys(), world_size
        for p, (x, y, i) in ref.items():
            assert other[p][2] == i
            assert torch.equal(other[p][0], x), (world_size, workers, p)
            assert torch.equal(other[p][1], y), (world_size, workers, p)
    # mixup/cutmix really happened, with the partner's label: soft targets carry two classes somewhere
    two_class = sum(int((y > 0).sum() == 2) for _, y, _ in ref.values())
    assert two_class > len(ref) // 4, two_class
    # with repeated augmentation no pair mixes an image with its own repeat
    assert all(ref[p][2] != ref[p ^ 1][2] for p in ref)


def test_mixed_view_is_built_from_the_two_unmixed_views(shapes_small):
    """Mixing in the collate step equals timm's math applied to the two plain views of the pair."""
    from timm.data.mixup import mixup_target
    loader = _loader(shapes_small["classification"], 2, 1)
    loader.sampler.set_epoch(0)
    collate = loader.collate_fn
    items = [loader.dataset[k] for k in list(iter(loader.sampler))[:8]]
    x, y, positions, _, _ = collate(items)
    plain = {it[2]: it for it in items}
    for k, p in enumerate(positions.tolist()):
        lam, box = collate.params(0, p, x.shape)
        own, other = plain[p], plain[p ^ 1]
        want = own[0].clone()
        if box is not None:
            yl, yh, xl, xh = box
            want[:, yl:yh, xl:xh] = other[0][:, yl:yh, xl:xh]
        else:
            want = own[0] * lam + other[0] * (1 - lam)
        torch.testing.assert_close(x[k], want)
        torch.testing.assert_close(y[k], mixup_target(torch.tensor([own[1], other[1]]), NUM_CLASSES, lam)[0])


def test_sample_mixup_needs_an_even_batch(shapes_small):
    from common.io import UserError
    with pytest.raises(UserError, match="--batch-size must be even"):
        _loader(shapes_small["classification"], 1, 0, extra=("--batch-size", "7"))
