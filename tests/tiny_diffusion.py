"""Tiny random diffusion models saved in diffusers' folder layout, for CPU tests.

Each builder makes a model from a small config with random weights (seeded, so
every build is the same), saves it with ``save_pretrained`` under ``path`` and
returns ``path``. Nothing is downloaded: the Stable Diffusion tokenizer is built
offline from a hand-written character vocabulary and a ``merges.txt`` holding only
``#version: 0.2`` (no merges: every character is one token).

The images these models make are noise-like; the tests only need the plumbing
(shapes, seeds, conditioning, SDEdit strength) to be real.

Builders (import them from ``tests.tiny_diffusion``):

* ``build_tiny_ddim(path, num_classes=None, image_size=16, channels=3,
  scheduler="ddim", learned_sigma=False, beta_schedule="linear", output_scale=1.0)`` -> a DDIM/DDPM pipeline folder
  (``unet/``, ``scheduler/``); class-conditional when ``num_classes`` is set;
* ``build_tiny_dit(path, num_classes=10, image_size=16, channels=3)`` -> a
  DiTPipeline folder (``transformer/``, ``vae/``, ``scheduler/``);
* ``build_tiny_sd(path, image_size=16, channels=3)`` -> a StableDiffusionPipeline
  folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
  without safety checker.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

__all__ = ["build_tiny_ddim", "build_tiny_dit", "build_tiny_sd", "tiny_clip_tokenizer", "tiny_vae"]


def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)  # builders only: fixes the random weights of the test models


def build_tiny_ddim(
    path: str | Path,
    num_classes: int | None = None,
    image_size: int = 16,
    channels: int = 3,
    scheduler: str = "ddim",
    learned_sigma: bool = False,
    beta_schedule: str = "linear",
    output_scale: float = 1.0,
    seed: int = 0,
) -> Path:
    """A tiny UNet2DModel (+ DDIM or DDPM scheduler), saved as a pipeline folder.

    ``num_classes`` makes the UNet class-conditional (``num_class_embeds``);
    ``learned_sigma`` doubles the output channels (improved-diffusion style);
    ``output_scale`` scales the last layer: 0 gives a model that predicts no noise,
    so DDIM returns x_t / sqrt(alpha_bar_t) = x0 + noise of the level the start
    timestep sets (a known answer for SDEdit tests).
    """
    import torch
    from diffusers import (
        DDIMPipeline,
        DDIMScheduler,
        DDPMPipeline,
        DDPMScheduler,
        UNet2DModel,
    )

    _seeded(seed)
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels * (2 if learned_sigma else 1),
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        num_class_embeds=num_classes,
    )
    with torch.no_grad():
        unet.conv_out.weight.mul_(output_scale)
        unet.conv_out.bias.mul_(output_scale)
    variance = "learned_range" if learned_sigma else "fixed_small"
    if scheduler == "ddim":
        pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule))
    elif scheduler == "ddpm":
        ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, variance_type=variance)
        pipe = DDPMPipeline(unet=unet, scheduler=ddpm)
    else:
        raise ValueError(f"build_tiny_ddim: scheduler must be 'ddim' or 'ddpm', got {scheduler!r}")
    path = Path(path)
    pipe.save_pretrained(path)
    return path


def tiny_vae(image_size: int = 16, channels: int = 3):
    """A tiny AutoencoderKL with 4 latent channels and a downsampling factor of 2."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=image_size,
    )


def build_tiny_dit(
    path: str | Path, num_classes: int = 10, image_size: int = 16, channels: int = 3, seed: int = 0
) -> Path:
    """A tiny DiT (learned sigma, ``num_classes`` classes + the null class) with a tiny VAE."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    _seeded(seed)
    vae = tiny_vae(image_size, channels)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=image_size // factor,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
        norm_num_groups=4,
    )
    id2label = {str(i): f"class{i}" for i in range(num_classes)}
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(), id2label=id2label)
    path = Path(path)
    pipe.save_pretrained(path)
    return path


def tiny_clip_tokenizer(folder: str | Path, max_length: int = 32):
    """A CLIPTokenizer over single characters, built offline from vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=max_length)


def build_tiny_sd(path: str | Path, image_size: int = 16, channels: int = 3, seed: int = 0) -> Path:
    """A tiny Stable Diffusion: UNet2DConditionModel, AutoencoderKL, CLIPTextModel, offline tokenizer.

    ``image_size`` is the pixel resolution (the UNet works on image_size/2 latents).
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_clip_tokenizer(scratch)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = tiny_vae(image_size, channels)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=image_size // factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path
