"""CLIP image embeddings (transformers), L2-normalised.

``model_path`` is a local folder saved by transformers: either a full CLIP model
(config ``model_type: clip``, e.g. a copy of openai/clip-vit-base-patch32) or a
vision tower with its projection (``model_type: clip_vision_model``, what
``CLIPVisionModelWithProjection.save_pretrained`` writes). Only the vision tower
and the visual projection are kept in memory.

Preprocessing is done here in torch, not by ``CLIPImageProcessor`` (whose default
backend needs torchvision): images scaled to [0, 1], the shorter side resized to
``size`` (bicubic, antialiased, clipped to [0, 1]), centre-cropped to ``crop_size``,
then normalised with the CLIP mean and std. ``size``, ``crop_size``, ``image_mean``
and ``image_std`` come from the folder's ``preprocessor_config.json`` when it has
one; otherwise both sizes are the model's ``image_size`` and the mean/std are
OpenAI CLIP's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from privevo.actors.embedders.pixels import StrictOptions, existing_path, image_batches
from privevo.actors.quiet_loading import quiet_model_loading

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MODEL_TYPES = ("clip", "clip_vision_model")


class Options(StrictOptions):
    model_path: str = Field(description="a local CLIP folder (config.json and weights, transformers layout)")
    batch_size: int = Field(64, ge=1)
    normalize: bool = Field(True, description="L2-normalise the embeddings (cosine geometry)")

    @field_validator("model_path")
    @classmethod
    def _clip_folder(cls, value: str) -> str:
        path = existing_path(value, kind="clip", need="dir")
        config = Path(path) / "config.json"
        if not config.is_file():
            raise ValueError(f"clip model_path {path!r} has no config.json")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise ValueError(f"clip model_path {path!r}: unreadable config.json ({exc})") from None
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"clip model_path {path!r}: config.json has model_type {model_type!r}; "
                f"expected one of {', '.join(_MODEL_TYPES)}"
            )
        return path


def _size(value: Any, default: int) -> tuple[int, int] | int:
    """A processor size entry: an int (shorter side) or (height, width)."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    raise ValueError(f"unsupported size entry in preprocessor_config.json: {value!r}")


class CLIPEmbedder:
    """Projected CLIP image embeddings of images in [0, max_value]."""

    Options = Options

    modality = "image"

    def __init__(self, max_value: float, options: Options, device: str = "cpu") -> None:
        import torch

        if not max_value > 0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        self.max_value = float(max_value)
        self.options = options
        self.device = device
        path = Path(options.model_path)
        self.name = f"clip:{path.name}"

        quiet_model_loading()
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type == "clip":
            from transformers import CLIPModel

            full = CLIPModel.from_pretrained(str(path), local_files_only=True)
            vision_model, projection = full.vision_model, full.visual_projection
            vision_config = full.config.vision_config
            del full  # the text tower is not needed
        else:
            from transformers import CLIPVisionModelWithProjection

            model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True)
            vision_model, projection = model.vision_model, model.visual_projection
            vision_config = model.config
        self.vision_model = vision_model.to(device=device, dtype=torch.float32).eval()
        self.projection = projection.to(device=device, dtype=torch.float32).eval()
        for param in list(self.vision_model.parameters()) + list(self.projection.parameters()):
            param.requires_grad_(False)
        self.dim = int(self.projection.out_features)

        image_size = vision_config.image_size
        image_size = int(image_size if isinstance(image_size, int) else image_size[0])
        processor: dict[str, Any] = {}
        processor_file = path / "preprocessor_config.json"
        if processor_file.is_file():
            processor = json.loads(processor_file.read_text())
        self.resize_to = _size(processor.get("size"), image_size) if processor.get("do_resize", True) else None
        crop = _size(processor.get("crop_size"), image_size)
        self.crop_to = (crop, crop) if isinstance(crop, int) else crop
        if not processor.get("do_center_crop", True):
            self.crop_to = None
        mean = processor.get("image_mean", CLIP_MEAN) if processor.get("do_normalize", True) else (0.0, 0.0, 0.0)
        std = processor.get("image_std", CLIP_STD) if processor.get("do_normalize", True) else (1.0, 1.0, 1.0)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._image_size = image_size

    def _preprocess(self, x):
        """(b, 3, H, W) in [0, 1] -> the model's normalised (b, 3, S, S) input."""
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        if self.resize_to is not None:
            if isinstance(self.resize_to, int):
                scale = self.resize_to / min(h, w)
                size = (max(self.resize_to, round(h * scale)), max(self.resize_to, round(w * scale)))
            else:
                size = self.resize_to
            if (h, w) != tuple(size):
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        if self.crop_to is not None:
            ch, cw = self.crop_to
            h, w = x.shape[-2:]
            if h < ch or w < cw:
                raise ValueError(f"clip: image {h}x{w} is smaller than the crop {ch}x{cw}")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        if tuple(x.shape[-2:]) != (self._image_size, self._image_size):
            x = F.interpolate(x, size=(self._image_size,) * 2, mode="bicubic", align_corners=False, antialias=True)
        return (x - self._mean) / self._std

    def embed(self, samples: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty((len(samples), self.dim), dtype=np.float32)
        row = 0
        with torch.no_grad():
            for x in image_batches(samples, self.max_value, self.options.batch_size, self.device):
                pooled = self.vision_model(pixel_values=self._preprocess(x)).pooler_output
                emb = self.projection(pooled).float()
                if self.options.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=-1)
                out[row : row + len(emb)] = emb.cpu().numpy()
                row += len(emb)
        return out
