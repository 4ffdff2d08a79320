"""Networks of the zoo that no package defines: the Tiny Training Engine's three paper nets
written the way TTE's own code writes them, a 1-D IMU net and a small transformer encoder.
Imported by models/zoo/build.py in the torch environment (see its docstring).

TTE (mit-han-lab/tiny-training) builds its float nets from its OFA-style modules
(algorithm/core/ofa_nn): a stem ConvLayer (Conv no bias, BN, ReLU6), MBInvertedConvLayer
blocks (optional 1x1 expand Conv+BN+ReLU6, kxk depthwise Conv+BN+ReLU6 with padding (k-1)//2,
1x1 project Conv+BN), a ResidualBlock that adds an identity shortcut, then
`x.mean(3).mean(2)` and a LinearLayer classifier (ProxylessNASNets.forward).  Its deployed
(quantized) graph is a plain Sequential of the same convs, a global average pool written as
`x.mean([-1, -2], keepdim=True)` and a 1x1 Conv classifier.  Both forms are built here.  The
architectures (channels, kernels, strides, shortcuts) are read from tte_archs.json, which
build.py's authors extracted from TTE's assets/mcu_models/*.pkl configs (weights not used).
"""
import json
from pathlib import Path

import torch
from torch import nn

ARCHS = json.loads((Path(__file__).with_name("tte_archs.json")).read_text())["nets"]


def _conv_bn(cin, cout, k, s, groups=1, act=True):
    layers = [("conv", nn.Conv2d(cin, cout, k, s, ((k[0] - 1) // 2, (k[1] - 1) // 2), groups=groups, bias=False)),
              ("bn", nn.BatchNorm2d(cout))]
    if act:
        layers.append(("act", nn.ReLU6(inplace=True)))
    from collections import OrderedDict
    return nn.Sequential(OrderedDict(layers))


class _MBBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        pw1, dw, pw2 = cfg["pointwise1"], cfg["depthwise"], cfg["pointwise2"]
        self.inverted_bottleneck = _conv_bn(pw1["cin"], pw1["cout"], (1, 1), 1) if pw1 else None
        self.depth_conv = _conv_bn(dw["cin"], dw["cout"], tuple(dw["k"]), dw["s"], groups=dw["g"])
        self.point_linear = _conv_bn(pw2["cin"], pw2["cout"], (1, 1), 1, act=False)
        self.residual = cfg["residual"] == "identity"

    def forward(self, x):
        y = x
        if self.inverted_bottleneck is not None:
            y = self.inverted_bottleneck(y)
        y = self.point_linear(self.depth_conv(y))
        return y + x if self.residual else y


class TTENet(nn.Module):
    """form 'ofa': the float training net (mean(3).mean(2) + Linear);
    form 'deploy': the deployed graph's structure (keepdim mean over [-1, -2] + 1x1 conv head)."""

    def __init__(self, name, n_classes=10, form="ofa"):
        super().__init__()
        a = ARCHS[name]
        fc = a["first_conv"]
        self.form = form
        self.first_conv = _conv_bn(fc["cin"], fc["cout"], tuple(fc["k"]), fc["s"])
        self.blocks = nn.ModuleList(_MBBlock(b) for b in a["blocks"])
        cin = a["classifier"]["cin"]
        if form == "ofa":
            self.classifier = nn.Linear(cin, n_classes)
        else:
            self.classifier = nn.Conv2d(cin, n_classes, 1)

    def forward(self, x):
        x = self.first_conv(x)
        for b in self.blocks:
            x = b(x)
        if self.form == "ofa":
            return self.classifier(x.mean(3).mean(2))
        return self.classifier(x.mean([-1, -2], keepdim=True)).flatten(1)


class IMUNet(nn.Module):
    """A 1-D CNN over 6-axis IMU windows (N, 6, 128): Conv1d+BN+ReLU x3 (stride 2 twice),
    a depthwise-separable block, global average pool, Linear to 6 activity classes."""

    def __init__(self, n_classes=6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(6, 16, 5, 1, 2, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 32, 5, 2, 2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 64, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU())
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(-1))


class TinyTransformer(nn.Module):
    """2-layer pre-norm-free transformer encoder (d_model 64, 4 heads, FF 128, GELU) on
    32 tokens of 16 features, a learned position embedding, mean pooling, Linear head."""

    def __init__(self, n_classes=4, tokens=32, features=16, d=64):
        super().__init__()
        self.proj = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        return self.head(self.encoder(self.proj(x) + self.pos).mean(1))
