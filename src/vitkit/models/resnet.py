"""ResNets: the CNN teachers of DeiT's distillation and the backbone of the paper's hybrid ViT.

One class covers both uses. ``norm="batch"`` is the classic ResNet (He et al., 2016) with
torchvision/timm parameter names (``conv1``, ``bn1``, ``layer1`` ... ``fc``);
``norm="group"`` with ``std_conv=True`` is the BiT variant the ViT paper's hybrid uses
(GroupNorm + weight-standardised convolutions, which do not depend on the batch and so
transfer better). ``stem="small"`` swaps the 7x7/stride-2 stem and max-pool for one 3x3
convolution, the usual choice for 28-32 px images, where a stride-4 stem would leave too
few pixels.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .spec import record_change


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (zero mean, unit variance per output filter)."""

    def __init__(self, *args, eps: float = 1e-8, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvFactory:
    """Builds the convolutions and norms of one network, so blocks need not know which kind."""

    def __init__(self, norm: Literal["batch", "group"] = "batch", std_conv: bool = False, groups: int = 32):
        self.norm, self.std_conv, self.groups = norm, std_conv, groups

    def conv(self, cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
        return (StdConv2d if self.std_conv else nn.Conv2d)(cin, cout, k, stride, k // 2, bias=False)

    def norm_layer(self, c: int) -> nn.Module:
        return nn.GroupNorm(min(self.groups, c), c, eps=1e-5) if self.norm == "group" else nn.BatchNorm2d(c)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, f: ConvFactory):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = f.conv(cin, width, 3, stride), f.norm_layer(width)
        self.conv2, self.bn2 = f.conv(width, cout, 3), f.norm_layer(cout)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, f: ConvFactory):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = f.conv(cin, width, 1), f.norm_layer(width)
        self.conv2, self.bn2 = f.conv(width, width, 3, stride), f.norm_layer(width)
        self.conv3, self.bn3 = f.conv(width, cout, 1), f.norm_layer(cout)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + (x if self.downsample is None else self.downsample(x)))


def _shortcut(cin: int, cout: int, stride: int, f: ConvFactory) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(f.conv(cin, cout, 1, stride), f.norm_layer(cout))


class ResNet(nn.Module):
    """ResNet classifier; ``forward_features`` gives the last stage's feature map (the hybrid's input).

    ``widths`` are the bottleneck (or basic-block) widths per stage; every stage after the
    first halves the resolution. The last norm of each residual branch starts at zero, so
    each block starts as the identity (Goyal et al., 2017), which trains deep nets faster.
    """

    def __init__(self, block: Literal["basic", "bottleneck"] = "basic", layers: tuple[int, ...] = (2, 2, 2, 2),
                 widths: tuple[int, ...] = (64, 128, 256, 512), in_chans: int = 3, num_classes: int = 1000,
                 stem: Literal["imagenet", "small"] = "imagenet", stem_width: int = 64,
                 norm: Literal["batch", "group"] = "batch", std_conv: bool = False, drop_rate: float = 0.0,
                 img_size: int | None = None, drop_path_rate: float = 0.0, weight_init: str = ""):
        super().__init__()
        del drop_path_rate  # accepted so the trainer can pass the ViT's common arguments
        if weight_init not in ("", "skip"):
            raise ValueError(f"weight_init {weight_init!r}: a ResNet starts from He init ('') or, for weights "
                             "about to be loaded, none ('skip')")
        self.img_size = img_size  # the size it was built for (a CNN takes any size): checkpoints record it
        f = ConvFactory(norm, std_conv)
        cls = Bottleneck if block == "bottleneck" else BasicBlock
        self.in_chans, self.num_classes = in_chans, num_classes
        self.conv1 = f.conv(in_chans, stem_width, 7 if stem == "imagenet" else 3, 2 if stem == "imagenet" else 1)
        self.bn1, self.act1 = f.norm_layer(stem_width), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        cin, self.stride = stem_width, 4 if stem == "imagenet" else 1
        for i, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(cls(cin, w, stride if j == 0 else 1, f))
                cin = w * cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stride *= stride
        self.num_stages = len(layers)
        self.num_features = self.out_chans = cin
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        if weight_init != "skip":
            self.init_weights()

    def init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 0.0 if _ends_branch(self, name) else 1.0)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int, zero_init: bool = False) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        record_change(self, num_classes=num_classes)  # so that a checkpoint saved afterwards has this head
        if zero_init and num_classes > 0:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _ends_branch(model: ResNet, name: str) -> bool:
    """Whether ``name`` is the final norm of a residual branch (bn2 of a basic block, bn3 of a bottleneck)."""
    if "." not in name:
        return False
    block = model.get_submodule(name.rsplit(".", 1)[0])
    last = {BasicBlock: "bn2", Bottleneck: "bn3"}.get(type(block))
    return last is not None and name.endswith("." + last)


# --- registry -----------------------------------------------------------------------------
register_model("resnet18", ResNet, "ResNet-18 (11.7M params), torchvision/timm layout",
               block="basic", layers=(2, 2, 2, 2))
register_model("resnet50", ResNet, "ResNet-50 (25.6M params), torchvision/timm layout",
               block="bottleneck", layers=(3, 4, 6, 3))
register_model("resnet_mini_28", ResNet,
               "CNN teacher for 28x28 grayscale: 3x3 stem, basic blocks (2,2,2) at widths 32/64/128",
               img_size=28, in_chans=1, num_classes=10, block="basic", layers=(2, 2, 2), widths=(32, 64, 128),
               stem="small", stem_width=32)
