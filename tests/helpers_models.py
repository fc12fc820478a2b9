"""Random-init timm models with non-trivial BN statistics and GRN, as the converter/export tests need."""
import timm
import torch


def nontrivial(model_name: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturb(timm.create_model(model_name, num_classes=num_classes))


def nontrivial_mm(cfg: dict, seed: int = 0) -> torch.nn.Module:
    """An OpenMMLab model built by mmpretrain's (or mmdet's, with a 'mmdet.' type) own registry, perturbed alike."""
    import mmdet.models  # noqa: F401  (register)
    import mmpretrain.models  # noqa: F401  (register)
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    torch.manual_seed(seed)
    # in mmpretrain's scope: a Runner built earlier in this process (an in-process tool test) left mmdet's current
    with DefaultScope.overwrite_default_scope("mmpretrain"):
        m = MODELS.build(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():  # LayerNorms and ConvNeXt's layer scale (1e-6 at init) matter too
            if name.endswith(".gamma") or "norm" in name.split(".")[-2]:
                if name.endswith((".weight", ".gamma")):
                    p.uniform_(0.5, 1.5)
                else:
                    p.uniform_(-0.2, 0.2)
    perturb(m)
    m.eval()  # mmdet/mmpretrain backbones' train() returns None: no chaining
    return m


def perturb(m: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
        for name, p in m.named_parameters():
            if ".grn." in name:
                p.uniform_(-0.5, 0.5)  # timm inits GRN to zero (identity): make it matter
    return m.eval()
