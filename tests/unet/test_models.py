"""U-Net / small-UNet shapes, options, size checks, config building."""

from __future__ import annotations

import pytest
import torch

from pcna_seg.config import load_config
from pcna_seg.errors import ConfigError
from pcna_seg.unet.models import UNet, build_unet, count_parameters


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_unet_shapes(upsample: str, batch_norm: bool) -> None:
    m = UNet(2, 3, depth=3, base_width=4, batch_norm=batch_norm, dropout=0.2, upsample=upsample)
    out = m(torch.rand(2, 2, 40, 48))
    assert out.shape == (2, 3, 40, 48) and out.dtype == torch.float32
    assert m.divisor == 8


def test_size_not_divisible_raises() -> None:
    m = UNet(1, 1, depth=2, base_width=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        m(torch.rand(1, 1, 30, 32))


def test_build_from_config_modes() -> None:
    cfg = load_config(opts=["UNET.DEPTH", "2", "UNET.BASE_WIDTH", "4"])
    m = build_unet(cfg)
    assert m(torch.rand(1, 2, 16, 16)).shape == (1, 3, 16, 16)
    cnt = load_config(opts=["UNET.MODE", "count", "UNET.CHANNELS", "['gray']", "UNET.DEPTH", "2",
                            "UNET.BASE_WIDTH", "4", "UNET.CLASSES", "['background','nucleus']"])  # fmt: skip
    assert build_unet(cnt)(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_small_unet_is_small_and_has_head() -> None:
    small = build_unet(load_config(opts=["UNET.ARCH", "small_unet"]))
    full = build_unet(load_config(opts=["UNET.ARCH", "unet", "UNET.BASE_WIDTH", "64"]))
    assert small.depth == 2 and small.divisor == 4
    assert len([m for m in small.head if isinstance(m, torch.nn.Conv2d)]) == 3
    assert count_parameters(small) * 50 < count_parameters(full)
    assert small(torch.rand(1, 2, 12, 20)).shape == (1, 3, 12, 20)


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="UNET.UPSAMPLE"):
        build_unet(load_config(opts=["UNET.UPSAMPLE", "nearest"]))
    with pytest.raises(ConfigError, match="UNET.ARCH"):
        build_unet(load_config(opts=["UNET.ARCH", "resnet"]))


def test_gradients_flow() -> None:
    m = UNet(2, 3, depth=2, base_width=4, upsample="bilinear")
    m(torch.rand(2, 2, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
