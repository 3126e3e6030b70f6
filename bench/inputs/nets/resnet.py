"""ResNet-18 and PreAct ResNet-18 with the CIFAR stem.

Key layouts match the common CIFAR implementations (kuangliu's ResNet-18 used in the AutoAttack
examples: ``conv1, bn1, layer1.0.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, linear``; and
RobustBench's PreActResNet-18: ``layer1.0.{bn1,conv1,bn2,conv2,shortcut.0}, bn, linear``).
Pooling is adaptive, so 32x32 matches the originals and other sizes also work.
"""

import torch.nn.functional as F
from torch import nn

from bench.inputs.nets.layers import activation, norm2d


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride, norm, act):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, cout)
        self.act = activation(act)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm2d(norm, cout))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class _PreAct(nn.Module):
    def __init__(self, cin, cout, stride, norm, act):
        super().__init__()
        self.bn1 = norm2d(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act = activation(act)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = self.act(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(self.act(self.bn2(out)))
        return out + shortcut


def _layers(block, norm, act):
    cin, stages = 64, []
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages.append(nn.Sequential(block(cin, cout, stride, norm, act), block(cout, cout, 1, norm, act)))
        cin = cout
    return stages


class ResNet18(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, norm="batch", act="relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = norm2d(norm, 64)
        self.act = activation(act)
        self.layer1, self.layer2, self.layer3, self.layer4 = _layers(_Basic, norm, act)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActResNet18(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, norm="batch", act="relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = _layers(_PreAct, norm, act)
        self.bn = norm2d(norm, 512)
        self.act = activation(act)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = self.act(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
