"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" edge variant of 2020) written out in torch.

Lite is EfficientNet-B0 made friendly to quantisation and edge runtimes: no squeeze-and-excite,
ReLU6 instead of swish, stem (32) and head (1280) widths fixed.  The layout follows the
TensorFlow reference, including its "SAME" padding (a stride-2 convolution pads one more pixel
at the bottom and right than at the top and left): the ImageNet weights this project ships
were trained with it, and symmetric padding would shift every feature map by a pixel.
Parameter names are our own; `models.classifier.pretrained` maps the published names onto
them.  Imports torch; import this module only where torch is wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: TensorFlow's BatchNorm defaults (decay 0.99, epsilon 1e-3), as the weights were trained
BN_MOMENTUM = 0.01
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: ImageNet training of Lite0 used dropout 0.2 before the classifier and drop-connect 0.2
DROPOUT = 0.2
DROP_PATH = 0.2
#: what the Lite models were trained on: (pixel - 127) / 128, i.e. mean 127/255, std 128/255
MEAN: tuple[float, float, float] = (127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0)
STD: tuple[float, float, float] = (128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0)


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of MBConv blocks: `repeats` blocks, the first with `stride`."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


#: EfficientNet-B0's stages (Lite0 has width and depth multipliers of 1.0, so they are B0's)
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding (output = ceil(input/stride)).

    The padding is computed from the input's shape in forward: under torch.export the spatial
    sizes are fixed (only the batch is dynamic), so the ONNX graph gets constant pads.
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = max((-(-ih // s) - 1) * s + k - ih, 0)
        pad_w = max((-(-iw // s) - 1) * s + k - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


class ConvBN(nn.Sequential):
    """Convolution, batch norm and (unless `act` is False) ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        layers: list[nn.Module] = [
            SameConv2d(cin, cout, kernel, stride=stride, groups=groups),
            nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int,
                 drop_path: float) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride=stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0.0:
            # Stochastic depth per sample: the whole branch is dropped, survivors rescaled.
            keep = 1.0 - self.drop_path
            mask = torch.rand((y.shape[0], 1, 1, 1), dtype=y.dtype, device=y.device) < keep
            y = y * mask.to(y.dtype) / keep
        return x + y


class EfficientNetLite(nn.Module):
    """NCHW float (normalised as `MEAN`/`STD` say) -> N x num_classes logits."""

    def __init__(self, num_classes: int = 1000, *, stages: tuple[Stage, ...] = LITE0_STAGES,
                 dropout: float = DROPOUT, drop_path: float = DROP_PATH) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        total = sum(s.repeats for s in stages)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for stage in stages:
            for r in range(stage.repeats):
                # Drop-path rises linearly with depth, as in the reference.
                blocks.append(MBConv(cin, stage.out_channels, kernel=stage.kernel,
                                     stride=stage.stride if r == 0 else 1, expand=stage.expand,
                                     drop_path=drop_path * len(blocks) / total))
                cin = stage.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N x 1280 pooled features (what the classifier reads)."""
        y: torch.Tensor = self.head(self.blocks(self.stem(x)))
        return y.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.dropout(self.features(x)))
        return out


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(num_classes)
