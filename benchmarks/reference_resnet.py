"""A minimal hand-written CIFAR ResNet, the yardstick for reslab's own nets.

He et al. 2015 §4.2: a 3x3 conv of 16 channels, three stages of n basic blocks (16, 32, 64 channels, stride 2 into
stages 2 and 3), option-A shortcuts (strided subsampling, zero-padded channels), global average pooling and a
linear head: 853,018 parameters at depth 56, as reslab's `resnet` family builds. Written the way such a net is
written by hand for speed (one module per block, in-place ReLUs as torchvision's ResNets have them, a mean for the
pooling, no framework), so the benchmark that times both tells what reslab's generality costs, if anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu_(out + shortcut)


class ReferenceResNet(nn.Module):
    def __init__(self, depth: int = 56, width: int = 16, classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu_(self.bn(self.conv(x))))
        return self.fc(out.mean((2, 3)))
