"""U-Net models for the semantic branch: the Ronneberger U-Net and the small-UNet variant.

Both take ``(N, C, H, W)`` float32 input (C = ``len(UNET.CHANNELS)``) and return
``(N, K, H, W)`` float32 logits with K = ``len(UNET.CLASSES)`` (count mode: K = 1 logit).
H and W must be divisible by ``model.divisor`` (= 2**depth); :mod:`pcna_seg.unet.predict`
pads frames that are not. Convolutions are 3×3 with padding 1 ("same"), so unlike the
original paper the output has the input's size and no cropping of skip connections is needed.

``small_unet`` means exactly: 2 down-sampling levels (instead of ``UNET.DEPTH``), widths
16-32-64 (instead of ``UNET.BASE_WIDTH`` doubling), and a head of three per-pixel fully
connected layers (1×1 convolutions 16→32→32→K with ReLU) replacing the single 1×1 output
convolution. Batch norm, dropout and the up-sampling mode still come from the config.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from yacs.config import CfgNode

from pcna_seg.errors import ConfigError, WeightsError

logger = logging.getLogger(__name__)

SMALL_UNET_DEPTH = 2
SMALL_UNET_WIDTH = 16
SMALL_UNET_HEAD = (32, 32)
UPSAMPLE_MODES = ("transpose", "bilinear")


def _double_conv(c_in: int, c_out: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    """Two (3×3 conv → [BN] → ReLU) blocks, optional channel dropout at the end."""
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class _Up(nn.Module):
    """Up-sample ×2 halving the channels, concatenate the skip, then a double conv.

    ``transpose``: 2×2 transposed convolution, stride 2. ``bilinear``: bilinear ×2 up-sampling
    followed by a 3×3 convolution and ReLU.
    """

    def __init__(self, c_in: int, c_out: int, mode: str, batch_norm: bool, dropout: float) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.ReLU(inplace=True),
            )
        self.conv = _double_conv(2 * c_out, c_out, batch_norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net: ``depth`` max-pool levels, widths ``base_width * 2**level``.

    Dropout (``Dropout2d``) is applied at the end of the bottleneck and of every decoder
    block. ``head`` lists hidden widths of extra per-pixel (1×1) layers before the output
    layer; empty = the paper's single 1×1 output convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 4,
        base_width: int = 64,
        batch_norm: bool = True,
        dropout: float = 0.0,
        upsample: str = "transpose",
        head: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"UNET.DEPTH must be >= 1, got {depth}")
        if upsample not in UPSAMPLE_MODES:
            raise ConfigError(f"UNET.UPSAMPLE must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"UNET.DROPOUT must be in [0, 1), got {dropout}")
        self.depth = depth
        self.divisor = 2**depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths[:-1]:
            self.down.append(_double_conv(c, w, batch_norm, 0.0))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(widths[-2], widths[-1], batch_norm, dropout)
        self.up = nn.ModuleList(
            _Up(widths[i + 1], widths[i], upsample, batch_norm, dropout) for i in reversed(range(depth))
        )
        layers: list[nn.Module] = []
        c = widths[0]
        for h in head:
            layers += [nn.Conv2d(c, h, 1), nn.ReLU(inplace=True)]
            c = h
        layers.append(nn.Conv2d(c, out_channels, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float → (N, K, H, W) logits; H, W divisible by ``self.divisor``."""
        if x.shape[-2] % self.divisor or x.shape[-1] % self.divisor:
            raise ValueError(
                f"U-Net input size {tuple(x.shape[-2:])} must be divisible by {self.divisor} (2**depth)"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


def num_outputs(cfg: CfgNode) -> int:
    """Logits per pixel: 1 in count mode (sigmoid), else ``len(UNET.CLASSES)`` (softmax)."""
    return 1 if cfg.UNET.MODE == "count" else len(cfg.UNET.CLASSES)


def build_unet(cfg: CfgNode) -> UNet:
    """Build the model named by ``UNET.ARCH`` ("unet" or "small_unet") from the config."""
    u = cfg.UNET
    if u.MODE not in ("livedead", "contour", "count"):
        raise ConfigError(f"UNET.MODE must be 'livedead', 'contour' or 'count', got {u.MODE!r}")
    common = dict(
        in_channels=len(u.CHANNELS),
        out_channels=num_outputs(cfg),
        batch_norm=u.BATCH_NORM,
        dropout=u.DROPOUT,
        upsample=u.UPSAMPLE,
    )
    if u.ARCH == "unet":
        return UNet(depth=u.DEPTH, base_width=u.BASE_WIDTH, **common)
    if u.ARCH == "small_unet":
        logger.info("small_unet: depth %d, base width %d (UNET.DEPTH/BASE_WIDTH not used)",
                    SMALL_UNET_DEPTH, SMALL_UNET_WIDTH)  # fmt: skip
        return UNet(depth=SMALL_UNET_DEPTH, base_width=SMALL_UNET_WIDTH, head=SMALL_UNET_HEAD, **common)
    raise ConfigError(f"UNET.ARCH must be 'unet' or 'small_unet', got {u.ARCH!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _hint(key: str, in_file: tuple[int, ...], in_model: tuple[int, ...]) -> str:
    """The config key that most likely explains a tensor of the wrong shape."""
    if key.startswith("down.0.0.") and in_file[:1] == in_model[:1] and in_file[1:2] != in_model[1:2]:
        return "UNET.CHANNELS"
    if key.startswith("head.") and in_file[:1] != in_model[:1] and in_file[1:] == in_model[1:]:
        return "UNET.CLASSES / UNET.MODE"
    return "UNET.BASE_WIDTH / UNET.ARCH"


def load_unet_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict into ``model``; one-line WeightsError when it does not fit.

    The message names the first tensor the file has and the model lacks (or the reverse: another
    layout), else the first tensor of the wrong shape with both shapes and the config key that
    probably differs, plus how many others differ, instead of torch's dump of every mismatch.
    """
    own = model.state_dict()
    wrong = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in state.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    n = len(wrong) + len(missing) + len(extra)
    if n == 0:
        model.load_state_dict(state)
        return
    layout = "UNET.DEPTH / ARCH / BATCH_NORM / UPSAMPLE?"  # tensor names differ: another layout
    if extra:
        first = f"the file's {extra[0]} is not in the model ({layout})"
    elif missing:
        first = f"the model's {missing[0]} is not in the file ({layout})"
    else:
        k, a, b = wrong[0]
        first = f"{k} is {a} in the file but {b} in the model ({_hint(k, a, b)}?)"
    more = f", and {n - 1} other tensors differ" if n > 1 else ""
    raise WeightsError(f"UNet weights {source} do not fit the config: {first}{more}")
