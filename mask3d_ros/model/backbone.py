"""Res16UNet, the sparse residual U-Net backbone of Mask3D, with MinkowskiEngine-compatible weights.

Module names and registration order reproduce the official `models/res16unet.py` so that the
`model.backbone.*` entries of a Mask3D checkpoint load with `strict=True`. The layers come from a
`LayerKit`: the pure-PyTorch engine of `mask3d_ros.model.sparse` by default, or MinkowskiEngine itself
(`backend="minkowski"`, see `mask3d_ros.model.backends`) with the same state_dict.
"""
from __future__ import annotations

import torch
from torch import nn

from mask3d_ros.model.backends import layer_kit
from mask3d_ros.model.layers import LayerKit

# BN momentum of the stem, strided/transposed convs and residual projections; the convs inside
# the residual blocks keep BatchNorm's default 0.1 because the official `_make_layer` does not
# forward it. Only training depends on these.
BN_MOMENTUM = 0.02
BLOCK_BN_MOMENTUM = 0.1


class BasicBlock(nn.Module):
    """Two 3x3x3 conv+BN with a residual; the 1x1 projection exists only where channels change."""

    def __init__(self, kit: LayerKit, in_channels: int, channels: int):
        super().__init__()
        self.kit = kit
        self.conv1 = kit.conv(in_channels, channels, kernel_size=3)
        self.norm1 = kit.batch_norm(channels, momentum=BLOCK_BN_MOMENTUM)
        self.conv2 = kit.conv(channels, channels, kernel_size=3)
        self.norm2 = kit.batch_norm(channels, momentum=BLOCK_BN_MOMENTUM)
        self.downsample = None
        if in_channels != channels:
            self.downsample = nn.Sequential(
                kit.conv(in_channels, channels, kernel_size=1),
                kit.batch_norm(channels, momentum=BN_MOMENTUM),
            )

    def forward(self, x):
        out = self.kit.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.kit.relu(out + residual)


def _make_stage(kit: LayerKit, in_channels: int, channels: int, num_blocks: int) -> nn.Sequential:
    blocks = [BasicBlock(kit, in_channels, channels)]
    blocks += [BasicBlock(kit, channels, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class Res16UNet(nn.Module):
    """Encoder strides 1->16 and decoder back to 1, skip connections concatenated as [upsampled, skip].

    `planes[0:4]` are the encoder stages at strides 2, 4, 8, 16 and `planes[4:8]` the decoder
    stages at strides 8, 4, 2, 1; `layers` the number of BasicBlocks per stage. `forward` returns
    `(out, aux)` with `aux = [s16, s8, s4, s2, s1]` (the features the Mask3D decoder reads) and
    `out is aux[-1]`. `final` (1x1 conv to `out_channels`) exists for checkpoint compatibility
    and is not applied: Mask3D never calls it.
    """

    def __init__(self, in_channels: int, out_channels: int, planes: tuple[int, ...], layers: tuple[int, ...],
                 init_dim: int = 32, conv1_kernel_size: int = 5, backend: str = "torch"):
        super().__init__()
        if len(planes) != 8 or len(layers) != 8:
            raise ValueError("Res16UNet needs 8 stage widths and 8 stage depths")
        kit = layer_kit(backend)
        self.kit = kit
        self.planes = tuple(planes)
        self.conv0p1s1 = kit.conv(in_channels, init_dim, kernel_size=conv1_kernel_size)
        self.bn0 = kit.batch_norm(init_dim, momentum=BN_MOMENTUM)
        self.conv1p1s2 = kit.conv(init_dim, init_dim, kernel_size=2, stride=2)
        self.bn1 = kit.batch_norm(init_dim, momentum=BN_MOMENTUM)
        self.block1 = _make_stage(kit, init_dim, planes[0], layers[0])
        self.conv2p2s2 = kit.conv(planes[0], planes[0], kernel_size=2, stride=2)
        self.bn2 = kit.batch_norm(planes[0], momentum=BN_MOMENTUM)
        self.block2 = _make_stage(kit, planes[0], planes[1], layers[1])
        self.conv3p4s2 = kit.conv(planes[1], planes[1], kernel_size=2, stride=2)
        self.bn3 = kit.batch_norm(planes[1], momentum=BN_MOMENTUM)
        self.block3 = _make_stage(kit, planes[1], planes[2], layers[2])
        self.conv4p8s2 = kit.conv(planes[2], planes[2], kernel_size=2, stride=2)
        self.bn4 = kit.batch_norm(planes[2], momentum=BN_MOMENTUM)
        self.block4 = _make_stage(kit, planes[2], planes[3], layers[3])
        self.convtr4p16s2 = kit.conv_transpose(planes[3], planes[4], kernel_size=2, stride=2)
        self.bntr4 = kit.batch_norm(planes[4], momentum=BN_MOMENTUM)
        self.block5 = _make_stage(kit, planes[4] + planes[2], planes[4], layers[4])
        self.convtr5p8s2 = kit.conv_transpose(planes[4], planes[5], kernel_size=2, stride=2)
        self.bntr5 = kit.batch_norm(planes[5], momentum=BN_MOMENTUM)
        self.block6 = _make_stage(kit, planes[5] + planes[1], planes[5], layers[5])
        self.convtr6p4s2 = kit.conv_transpose(planes[5], planes[6], kernel_size=2, stride=2)
        self.bntr6 = kit.batch_norm(planes[6], momentum=BN_MOMENTUM)
        self.block7 = _make_stage(kit, planes[6] + planes[0], planes[6], layers[6])
        self.convtr7p2s2 = kit.conv_transpose(planes[6], planes[7], kernel_size=2, stride=2)
        self.bntr7 = kit.batch_norm(planes[7], momentum=BN_MOMENTUM)
        self.block8 = _make_stage(kit, planes[7] + init_dim, planes[7], layers[7])
        self.final = kit.conv(planes[7], out_channels, kernel_size=1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the official ResNetBase: kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0.

        ME's fan_out is `volume * out` for `[volume, in, out]` kernels but `in` for `[in, out]` ones
        (it treats them as Linear weights). Transposed convolutions keep the layer default, as
        upstream (its isinstance check misses them).
        """
        for name, param in self.named_parameters():
            if name.endswith("kernel") and "convtr" not in name:
                fan_out = param.shape[0] * param.shape[2] if param.ndim == 3 else param.shape[0]
                with torch.no_grad():
                    param.normal_(0.0, (2.0 / fan_out) ** 0.5)
            elif name.endswith("bn.weight"):
                nn.init.ones_(param)
            elif name.endswith("bn.bias"):
                nn.init.zeros_(param)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of `aux` = [s16, s8, s4, s2, s1] (Mask3D's `sizes`)."""
        return self.planes[3:]

    def forward(self, x):
        relu, cat = self.kit.relu, self.kit.cat
        out_p1 = relu(self.bn0(self.conv0p1s1(x)))
        out_b1p2 = self.block1(relu(self.bn1(self.conv1p1s2(out_p1))))
        out_b2p4 = self.block2(relu(self.bn2(self.conv2p2s2(out_b1p2))))
        out_b3p8 = self.block3(relu(self.bn3(self.conv3p4s2(out_b2p4))))
        out_s16 = self.block4(relu(self.bn4(self.conv4p8s2(out_b3p8))))
        out_s8 = self.block5(cat([relu(self.bntr4(self.convtr4p16s2(out_s16))), out_b3p8]))
        out_s4 = self.block6(cat([relu(self.bntr5(self.convtr5p8s2(out_s8))), out_b2p4]))
        out_s2 = self.block7(cat([relu(self.bntr6(self.convtr6p4s2(out_s4))), out_b1p2]))
        out_s1 = self.block8(cat([relu(self.bntr7(self.convtr7p2s2(out_s2))), out_p1]))
        return out_s1, [out_s16, out_s8, out_s4, out_s2, out_s1]


def Res16UNet34C(in_channels: int, out_channels: int, backend: str = "torch") -> Res16UNet:
    """Mask3D's backbone for ScanNet, ScanNet200 and S3DIS (37.9 M parameters)."""
    return Res16UNet(in_channels, out_channels, planes=(32, 64, 128, 256, 256, 128, 96, 96),
                     layers=(2, 3, 4, 6, 2, 2, 2, 2), backend=backend)


def Res16UNet18B(in_channels: int, out_channels: int, backend: str = "torch") -> Res16UNet:
    """The STPLS3D validation backbone (17.2 M parameters)."""
    return Res16UNet(in_channels, out_channels, planes=(32, 64, 128, 256, 128, 128, 128, 128),
                     layers=(2,) * 8, backend=backend)


def Res16UNet14A(in_channels: int, out_channels: int, width: float = 1.0, conv1_kernel_size: int = 5,
                 backend: str = "torch") -> Res16UNet:
    """One BasicBlock per stage, channels scaled by `width` (rounded to multiples of 8).

    `width=1` is the upstream Res16UNet14A (8.0 M parameters with 200 labels, 0.5: 2.0 M); smaller widths give
    a compact backbone for our own training. Decoders must read `feature_channels`.
    """
    def scaled(channels: int) -> int:
        return max(8, int(round(channels * width / 8)) * 8)

    return Res16UNet(in_channels, out_channels, planes=tuple(scaled(c) for c in (32, 64, 128, 256, 128, 128, 96, 96)),
                     layers=(1,) * 8, init_dim=scaled(32), conv1_kernel_size=conv1_kernel_size, backend=backend)
