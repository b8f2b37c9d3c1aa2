"""2-D CNNs with real tasks, defined here (the PyPI torchvision wheel does not import with the
CPU torch) and trained on shipped data: scikit-learn's handwritten digits (1,797 8×8 images,
10 classes), upsampled to 3×32×32. Nothing is downloaded; trained weights are cached like the
reference model's (``$HWSEARCH_CACHE``).

``--model hwsearch.zoo2d:mobilenet_digits --data hwsearch.zoo2d:digits_data`` names them
(``hwsearch.zoo2d:resnet_digits`` the ResNet-18-style one; the same data).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsearch.zoo import Dataset, trained_and_cached

__all__ = ["digits_data", "MobileNetV2Digits", "mobilenet_digits", "MOBILENET_DIGITS",
           "ResNetDigits", "resnet_digits", "RESNET_DIGITS"]

MOBILENET_DIGITS = ("hwsearch.zoo2d:mobilenet_digits", "hwsearch.zoo2d:digits_data")
RESNET_DIGITS = ("hwsearch.zoo2d:resnet_digits", "hwsearch.zoo2d:digits_data")
_REVISION = "digits-v1"
_RESNET_REVISION = "resnet-digits-v1"  # bump when the ResNet's architecture or recipe changes


def digits_data(seed: int = 0, size: int = 32) -> Dataset:
    """scikit-learn's digits as (N, 3, size, size) float32: bilinear upsampling of the 8×8
    images, three channels that differ (the image, a contrast-stretched copy
    and a 1-pixel shifted copy) so that the first conv has real colour-like structure;
    a stratified 75/25 train/validation split fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    stretched = (x - 0.5) * 1.5
    shifted = torch.roll(x, shifts=(1, 1), dims=(2, 3))
    x = torch.cat([x - 0.3, stretched, shifted - 0.3], dim=1)
    y = torch.tensor(d.target, dtype=torch.long)
    tr, va = train_test_split(torch.arange(len(y)).numpy(), test_size=0.25, random_state=seed, stratify=y.numpy())
    return Dataset(x[va], y[va], x[tr], y[tr], name="digits32")


def _inverted_residual(cin: int, cout: int, stride: int, expand: int) -> nn.Module:
    return _IR(cin, cout, stride, expand)


class _IR(nn.Module):
    """MobileNetV2's inverted residual: 1×1 expand → 3×3 depthwise → 1×1 project (linear),
    with a residual add when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.expand = nn.Conv2d(cin, hid, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(hid)
        self.dw = nn.Conv2d(hid, hid, 3, stride=stride, padding=1, groups=hid, bias=False)
        self.dw_bn = nn.BatchNorm2d(hid)
        self.project = nn.Conv2d(hid, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand_bn(self.expand(x)))
        h = F.relu6(self.dw_bn(self.dw(h)))
        h = self.project_bn(self.project(h))
        return x + h if self.residual else h


class MobileNetV2Digits(nn.Module):
    """A MobileNetV2-style net for 3×32×32 inputs: a 3×3 stem, seven inverted residual blocks
    (expansion 4; strides 1, 2, 1, 2, 1, 1, 2) and a 1×1 head conv before global pooling and a
    linear classifier — 23 prunable conv/linear layers with residual-coupled channel groups and
    depthwise convs. ``width`` scales every channel count."""

    def __init__(self, width: int = 16, classes: int = 10, expand: int = 4) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w)
        cfg = [(w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 3 * w, 2), (3 * w, 3 * w, 1), (3 * w, 3 * w, 1),
               (3 * w, 4 * w, 2)]
        self.blocks = nn.Sequential(*[_inverted_residual(a, b, s, expand) for a, b, s in cfg])
        self.head = nn.Conv2d(4 * w, 8 * w, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(8 * w)
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.head_bn(self.head(x)))
        return self.fc(x.mean(dim=(2, 3)))


def mobilenet_digits(width: int = 16, epochs: int = 30) -> tuple[nn.Module, torch.Tensor]:
    """The MobileNetV2-style net trained on :func:`digits_data` (validation accuracy 0.996;
    the first time it trains for 483 s on the 2-core machine, which was shared with other work;
    cached)."""
    data = digits_data()
    model = MobileNetV2Digits(width)
    torch.manual_seed(0)  # after building the model, as the cached weights were made
    model = trained_and_cached(model, data, stem=f"mobilenet_digits-w{width}",
                               tag=f"{_REVISION}-mbv2-w{width}-e{epochs}-{torch.__version__}",
                               what="MobileNetV2-style digits model", epochs=epochs, lr=3e-3)
    return model, data.example_input


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 convs with BatchNorm and a residual add; a strided 1×1
    projection (with BatchNorm) on the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(h + shortcut)


class ResNetDigits(nn.Module):
    """A ResNet-18-style net for 3×32×32 inputs (the CIFAR variant): a 3×3 stem, four stages
    of two basic blocks (widths w, 2w, 4w, 8w; stages 2–4 halve the resolution with a strided
    conv and a 1×1 projection shortcut), global pooling and a linear classifier — 21 prunable
    conv/linear layers whose residual adds couple the channels of each stage. ``width`` is w."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)  # CIFAR-style: stage 1 at the full 32×32
        self.stem_bn = nn.BatchNorm2d(w)
        widths = [w, 2 * w, 4 * w, 8 * w]
        stages = []
        cin = w
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def resnet_digits(width: int = 16, epochs: int = 6, *, trained: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The ResNet-18-style net trained on :func:`digits_data` and cached (validation accuracy
    0.991; the first time it trains for 88–99 s on the shared 2-core machine, about 115 s of
    CPU). ``trained=False`` returns the randomly initialised net (seed 0) without
    training or touching the cache."""
    data = digits_data()
    torch.manual_seed(0)
    model = ResNetDigits(width)
    if not trained:
        return model.eval(), data.example_input
    model = trained_and_cached(model, data, stem=f"resnet_digits-w{width}",
                               tag=f"{_RESNET_REVISION}-w{width}-e{epochs}-{torch.__version__}",
                               what="ResNet-18-style digits model", epochs=epochs, lr=3e-3)
    return model, data.example_input
