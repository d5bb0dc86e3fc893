"""The FID network: Inception-v3 pool3 features (2048-d), in plain torch.

FID (Heusel et al., 2017) is defined with the TensorFlow graph
``inception-2015-12-05``. Its PyTorch port, used by pytorch-fid and torch-fidelity,
is torchvision's Inception-v3 with a few blocks changed to match the TF graph:

* Mixed_5b/5c/5d (block A), Mixed_6b..6e (block C) and Mixed_7b (block E, first):
  the pooling branch averages over the valid pixels only
  (``avg_pool2d(..., count_include_pad=False)``, as TF does);
* Mixed_7c (block E, second): the pooling branch is a 3x3 *max* pool, stride 1;
* the classifier has 1008 outputs (``fc``), and there is no auxiliary head.

This module rebuilds that network without torchvision (which does not install
beside this project's torch) with the same parameter names, so the weights file
loads with ``load_state_dict(strict=True)``.

Weights: the pytorch-fid release file ``pt_inception-2015-12-05-6726825d.pth``
(https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights, a state dict
converted from the TF graph). torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` has the same key layout. Download
it once on a machine with internet and point ``model_path`` at it; privevo never
downloads weights.

Preprocessing (as pytorch-fid): images scaled to [0, 1], resized to 299x299
(bilinear, align_corners=False, no antialiasing), then mapped to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from privevo.actors.embedders.pixels import StrictOptions, existing_path, image_batches

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)
INPUT_SIZE = 299
FEATURE_DIM = 2048
MIN_INPUT_SIZE = 75  # smallest side the stride-2 stem and reductions accept


class Options(StrictOptions):
    model_path: str = Field(
        description=f"the FID Inception weights ({FID_WEIGHTS_FILE}, from {FID_WEIGHTS_URL})"
    )
    batch_size: int = Field(64, ge=1)
    resize_input: bool = Field(True, description="resize to 299x299 as FID does; off: native size (>= 75 px)")

    @field_validator("model_path")
    @classmethod
    def _exists(cls, value: str) -> str:
        return existing_path(value, kind="inception", need="file")


def build_fid_inception():
    """The FID Inception-v3 as a torch module (random weights, eval mode).

    ``module(x)`` takes (n, 3, H, W) images in [-1, 1] and returns the (n, 2048)
    pool3 features; ``module.fc`` (2048 -> 1008) is kept only so the weights file
    loads strictly.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BasicConv2d(nn.Module):
        def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def avg_pool_valid(x):  # TF's average pool: padded zeros are not counted
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class BlockA(nn.Module):  # Mixed_5b/5c/5d
        def __init__(self, cin: int, pool_features: int) -> None:
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 64, 1)
            self.branch5x5_1 = BasicConv2d(cin, 48, 1)
            self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
            self.branch_pool = BasicConv2d(cin, pool_features, 1)

        def forward(self, x):
            a = self.branch1x1(x)
            b = self.branch5x5_2(self.branch5x5_1(x))
            c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            d = self.branch_pool(avg_pool_valid(x))
            return torch.cat([a, b, c, d], 1)

    class BlockB(nn.Module):  # Mixed_6a (grid reduction 35 -> 17)
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

        def forward(self, x):
            a = self.branch3x3(x)
            b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            c = F.max_pool2d(x, kernel_size=3, stride=2)
            return torch.cat([a, b, c], 1)

    class BlockC(nn.Module):  # Mixed_6b..6e (factorised 7x7)
        def __init__(self, cin: int, c7: int) -> None:
            super().__init__()
            self.branch1x1 = BasicConv2d(cin, 192, 1)
            self.branch7x7_1 = BasicConv2d(cin, c7, 1)
            self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
            self.branch_pool = BasicConv2d(cin, 192, 1)

        def forward(self, x):
            a = self.branch1x1(x)
            b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            c = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                c = layer(c)
            d = self.branch_pool(avg_pool_valid(x))
            return torch.cat([a, b, c, d], 1)

    class BlockD(nn.Module):  # Mixed_7a (grid reduction 17 -> 8)
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3_1 = BasicConv2d(cin, 192, 1)
            self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

        def forward(self, x):
            a = self.branch3x3_2(self.branch3x3_1(x))
            b = self.branch7x7x3_1(x)
            for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
                b = layer(b)
            c = F.max_pool2d(x, kernel_size=3, stride=2)
            return torch.cat([a, b, c], 1)

    class BlockE(nn.Module):  # Mixed_7b (avg pool, valid pixels) and Mixed_7c (max pool)
        def __init__(self, cin: int, pool: str) -> None:
            super().__init__()
            self.pool = pool
            self.branch1x1 = BasicConv2d(cin, 320, 1)
            self.branch3x3_1 = BasicConv2d(cin, 384, 1)
            self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
            self.branch_pool = BasicConv2d(cin, 192, 1)

        def forward(self, x):
            a = self.branch1x1(x)
            b = self.branch3x3_1(x)
            b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
            c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
            if self.pool == "max":
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = avg_pool_valid(x)
            d = self.branch_pool(pooled)
            return torch.cat([a, b, c, d], 1)

    class FIDInceptionV3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
            self.Mixed_5b = BlockA(192, pool_features=32)
            self.Mixed_5c = BlockA(256, pool_features=64)
            self.Mixed_5d = BlockA(288, pool_features=64)
            self.Mixed_6a = BlockB(288)
            self.Mixed_6b = BlockC(768, c7=128)
            self.Mixed_6c = BlockC(768, c7=160)
            self.Mixed_6d = BlockC(768, c7=160)
            self.Mixed_6e = BlockC(768, c7=192)
            self.Mixed_7a = BlockD(768)
            self.Mixed_7b = BlockE(1280, pool="avg")
            self.Mixed_7c = BlockE(2048, pool="max")
            self.fc = nn.Linear(2048, 1008)  # unused for features; present in the weights file

        def forward(self, x):
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for block in (
                self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,
            ):  # fmt: skip
                x = block(x)
            return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)

    return FIDInceptionV3().eval()


def load_fid_inception(path: str | Path, device: str = "cpu"):
    """The FID Inception with the weights in ``path`` (strict: every key must match)."""
    import torch

    model = build_fid_inception()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"inception model_path {str(path)!r}: cannot read a torch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(  # noqa: TRY004 - a bad file, reported like the other bad-file cases
            f"inception model_path {str(path)!r}: expected a state dict, got {type(state).__name__}"
        )
    # BatchNorm's step counter is unused in eval; files saved before torch 0.4.1 lack it.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"inception model_path {str(path)!r} does not hold the FID Inception weights "
            f"(expected pytorch-fid's {FID_WEIGHTS_FILE}): {exc}"
        ) from exc
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device).eval()


class InceptionEmbedder:
    """FID Inception-v3 pool3 features (2048-d) of images in [0, max_value]."""

    Options = Options

    modality = "image"
    dim = FEATURE_DIM

    def __init__(self, max_value: float, options: Options, device: str = "cpu") -> None:
        if not max_value > 0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        self.max_value = float(max_value)
        self.options = options
        self.device = device
        self.name = f"inception:{Path(options.model_path).name}"
        self.model = load_fid_inception(options.model_path, device)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = np.empty((len(samples), FEATURE_DIM), dtype=np.float32)
        row = 0
        with torch.no_grad():
            for x in image_batches(samples, self.max_value, self.options.batch_size, self.device):
                if self.options.resize_input:
                    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
                elif min(x.shape[-2:]) < MIN_INPUT_SIZE:
                    raise ValueError(
                        f"inception with resize_input=false needs images of at least "
                        f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}; got {tuple(x.shape[-2:])}"
                    )
                features = self.model(2.0 * x - 1.0)
                out[row : row + len(features)] = features.float().cpu().numpy()
                row += len(features)
        return out
