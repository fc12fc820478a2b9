"""configs/distill/a1|a2|a3.yaml resolve to the paper's strategies (Sec. 4 of arXiv 2305.15781, the official train commands, timm's RSB A1/A2/A3)."""
import pytest

from distill.args import parse_args
from common.io import UserError

COMMON = dict(opt="lamb", sched="cosine", warmup_epochs=5, warmup_lr=1e-6, drop=0.0, cutmix=1.0,
              color_jitter=0.0, crop_pct=0.95, amp=True, bce_loss=True, batch_size=256,
              teacher="beitv2_base_patch16_224", kd_loss=["kd"], temperature=1.0)
PAPER = {
    "a1": dict(COMMON, epochs=600, lr=5e-3, weight_decay=0.01, mixup=0.2, smoothing=0.1, aug_repeats=3,
               aa="rand-m7-mstd0.5", drop_path=0.05, img_size=224),
    "a2": dict(COMMON, epochs=300, lr=5e-3, weight_decay=0.02, mixup=0.1, smoothing=0.0, aug_repeats=3,
               aa="rand-m7-mstd0.5", drop_path=0.05, img_size=224),
    "a3": dict(COMMON, epochs=100, lr=8e-3, weight_decay=0.02, mixup=0.1, smoothing=0.0, aug_repeats=0,
               aa="rand-m6-mstd0.5-inc1", drop_path=0.0, img_size=160, test_img_size=224),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_matches_paper(name):
    args = parse_args(["-c", f"configs/distill/{name}.yaml", "--data-dir", "x"])
    for k, v in PAPER[name].items():
        assert getattr(args, k) == v, (name, k)


def test_flags_override_recipe():
    args = parse_args(["-c", "configs/distill/a2.yaml", "--data-dir", "x", "--epochs", "7", "--kd-loss", "dkd"])
    assert args.epochs == 7 and args.kd_loss == ["dkd"] and args.weight_decay == 0.02


def test_bad_recipe_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nno_such_flag: 1\n")
    with pytest.raises(UserError, match="unknown keys: no_such_flag"):
        parse_args(["-c", str(bad), "--data-dir", "x"])
    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse_args(["-c", str(evil), "--data-dir", "x"])
