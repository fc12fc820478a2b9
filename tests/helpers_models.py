"""Random-init timm models with non-trivial BN statistics and GRN, as the converter/export tests need."""
import timm
import torch


def nontrivial(model_name: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = timm.create_model(model_name, num_classes=num_classes)
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
