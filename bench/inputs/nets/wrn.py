"""Wide ResNets.

``WideResNet`` follows the key layout of the WRN in RobustBench / TRADES / AutoAttack examples
(``conv1``, ``block1.layer.0.bn1``, ``convShortcut``, ``bn1``, ``fc``), so their state dicts load
unchanged.  ``JemWideResNet`` reproduces JEM's network (Grathwohl et al. 2020, ``wideresnet.py``):
pre-activation blocks with leaky ReLU 0.2, conv biases, stride on the second conv, no norm by
default, and a separate ``class_output`` head on the ``f`` body as in JEM's checkpoints.
Both pool adaptively, so any input size at least 8x8 works.
"""

import torch.nn.functional as F
from torch import nn

from bench.inputs.nets.layers import activation, norm2d


class _Block(nn.Module):
    def __init__(self, cin, cout, stride, norm, act, drop):
        super().__init__()
        self.bn1, self.relu1 = norm2d(norm, cin), activation(act)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = norm2d(norm, cout), activation(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.equal = cin == cout and stride == 1
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(a)))
        if self.drop > 0:
            out = F.dropout(out, p=self.drop, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal else self.convShortcut(a))


class _Stage(nn.Module):
    def __init__(self, n, cin, cout, stride, norm, act, drop):
        super().__init__()
        self.layer = nn.Sequential(*[
            _Block(cin if i == 0 else cout, cout, stride if i == 0 else 1, norm, act, drop) for i in range(n)
        ])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, depth=28, widen_factor=10, norm="batch",
                 act="relu", drop_rate=0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n, k = (depth - 4) // 6, widen_factor
        ch = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = _Stage(n, ch[0], ch[1], 1, norm, act, drop_rate)
        self.block2 = _Stage(n, ch[1], ch[2], 2, norm, act, drop_rate)
        self.block3 = _Stage(n, ch[2], ch[3], 2, norm, act, drop_rate)
        self.bn1, self.relu = norm2d(norm, ch[3]), activation(act)
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _JemBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, act, drop):
        super().__init__()
        self.lrelu = activation(act)
        self.bn1 = norm2d(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.bn2 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=True))

    def forward(self, x):
        out = self.dropout(self.conv1(self.lrelu(self.bn1(x))))
        out = self.conv2(self.lrelu(self.bn2(out)))
        return out + self.shortcut(x)


class _JemBody(nn.Module):
    """JEM's ``Wide_ResNet``: returns the pooled penultimate features."""

    def __init__(self, in_channels, depth, widen_factor, norm, act, drop_rate, num_classes):
        super().__init__()
        n, k = (depth - 4) // 6, widen_factor
        ch = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, padding=1, bias=True)
        layers, cin = [], ch[0]
        for cout, stride in zip(ch[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(n):
                blocks.append(_JemBlock(cin, cout, stride if i == 0 else 1, norm, act, drop_rate))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn1 = norm2d(norm, ch[3])
        self.lrelu = activation(act)
        self.linear = nn.Linear(ch[3], num_classes)  # present (unused) in JEM's files
        self.last_dim = ch[3]

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.lrelu(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class JemWideResNet(nn.Module):
    """JEM's classifier: ``f`` (the WRN body) and ``class_output`` (the logits head)."""

    def __init__(self, num_classes=10, in_channels=3, depth=28, widen_factor=10, norm=None,
                 act="leaky_relu", drop_rate=0.0, energy_head=True):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        self.f = _JemBody(in_channels, depth, widen_factor, norm, act, drop_rate, num_classes)
        if energy_head:
            self.energy_output = nn.Linear(self.f.last_dim, 1)  # JEM's unused EBM head
        self.class_output = nn.Linear(self.f.last_dim, num_classes)

    def forward(self, x):
        return self.class_output(self.f(x))
