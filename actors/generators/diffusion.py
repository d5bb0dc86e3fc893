"""Diffusion models (diffusers) as PE's foundation model for images.

PE touches the model only through two calls (see ``base.py``):

* ``random(labels, seed)``: a fresh sample for each label: class-conditional
  through ``class_map`` (a UNet2DModel with ``num_class_embeds``, or a DiT with
  ImageNet ids, as PE-1 used an ImageNet model for CIFAR-10), text-conditional
  through per-class prompts (Stable Diffusion), or unconditional;
* ``variation(parents, degree, seed)``: SDEdit. The parent image is noised to the
  level ``degree`` selects and denoised from there. ``degree`` in (0, 1] is the
  fraction of the ``num_inference_steps`` sampling trajectory that is re-run:
  ``int(num_inference_steps * degree)`` steps, at least one, exactly like the
  ``strength`` of diffusers' img2img pipelines; degree 1 starts from (almost) pure
  noise, degree 0 returns copies of the parents. Stable Diffusion uses
  ``StableDiffusionImg2ImgPipeline(strength=...)``; DDPM/DDIM/DiT, which have no
  img2img pipeline, add noise with ``scheduler.add_noise`` at the starting
  timestep and step the scheduler by hand over the remaining timesteps. A
  per-row ``degree`` array is served by grouping rows that run the same number
  of steps.

Images come back float32, channels last, in the private set's shape
(``context.sample_shape``) and range [0, ``context.max_value``], resized with an
antialiased bilinear filter from the model's resolution; a grayscale private set
gets the mean of the RGB channels. Parents are resized back to the model's
resolution before they are noised.

Every random choice of a call comes from a ``torch.Generator`` on the model's
device seeded from ``seed`` (and a numpy Generator for class-id draws): the same
seed, batch size and hardware reproduce a shard exactly. No global RNG is used.

``params``: class-conditional models record the model class id of each sample
(``class_id``), so variations keep the ImageNet class their parent was drawn
from; the other pipelines return no params (the image is the genome).

This module imports torch and diffusers only inside the generator, so the driver
can validate :class:`Options` cheaply, before any model or private data is loaded.
``dtype`` float16/bfloat16 are for GPUs: on a CPU the generator falls back to
float32 (with a warning), so a GPU config still runs on a laptop.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.quiet_loading import quiet_model_loading

__all__ = ["DiffusionGenerator", "Options", "steps_for_degree"]

# What each pipeline needs in its model folder (diffusers' save_pretrained layout).
_LAYOUT: dict[str, tuple[str, ...]] = {
    "ddpm": ("unet", "scheduler"),
    "ddim": ("unet", "scheduler"),
    "dit": ("transformer", "vae", "scheduler"),
    "stable_diffusion": ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"),
}
_DEFAULT_GUIDANCE = {"dit": 4.0, "stable_diffusion": 7.5}  # the diffusers pipelines' defaults


class Options(BaseModel, extra="forbid"):
    """Typed options of the ``diffusion`` generator (``generator.options`` in a run config)."""

    pipeline: Literal["ddpm", "ddim", "dit", "stable_diffusion"] = Field(
        description="ddpm/ddim: UNet2DModel + that scheduler; dit: DiT + VAE; stable_diffusion: text-to-image + img2img"
    )
    model_path: str = Field(description="local diffusers folder (save_pretrained layout); nothing is downloaded")
    class_map: dict[int, int | list[int]] | None = Field(
        None,
        description="private label -> model class id(s) (class-conditional UNet or DiT); a list is drawn from "
        "uniformly; unset on a class-conditional model: uniform over all its classes (PE-1's random API)",
    )
    prompts: dict[int, str] | None = Field(
        None, description="stable_diffusion: private label -> prompt; labels without one use prompt_template"
    )
    prompt_template: str = Field(
        "a photo of a {class_name}", description="stable_diffusion: default prompt; {class_name} from the context"
    )
    negative_prompt: str | None = Field(None, description="stable_diffusion: negative prompt (with guidance > 1)")
    num_inference_steps: int = Field(50, ge=1, le=1000, description="sampling steps of a full trajectory")
    guidance_scale: float | None = Field(
        None, ge=0, description="classifier-free guidance (dit: 4.0, stable_diffusion: 7.5 by default; <= 1: off)"
    )
    scheduler: Literal["default", "ddim", "ddpm"] = Field(
        "default",
        description="dit/stable_diffusion only: sampler; default = ddim for dit, the folder's own for stable_diffusion",
    )
    eta: float = Field(0.0, ge=0, le=1, description="DDIM eta (0: deterministic given the starting noise)")
    image_size: int | None = Field(
        None, ge=8, description="ddpm/ddim/stable_diffusion: generation resolution (default: the model's)"
    )
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="model dtype; float16/bfloat16 on GPU only (CPU falls back to float32)"
    )

    @field_validator("model_path")
    @classmethod
    def _exists(cls, value: str) -> str:
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(f"model_path {value} does not exist (a local diffusers model folder is expected)")
        return str(path)

    @field_validator("class_map")
    @classmethod
    def _class_ids(cls, value: dict[int, int | list[int]] | None) -> dict[int, int | list[int]] | None:
        if value is None:
            return value
        for label, ids in value.items():
            ids = ids if isinstance(ids, list) else [ids]
            if not ids or any(i < 0 for i in ids):
                raise ValueError(f"class_map[{label}]: expected a class id >= 0 or a non-empty list of them")
        return value

    @model_validator(mode="after")
    def _fits_pipeline(self) -> Options:
        path = Path(self.model_path)
        missing = [part for part in _LAYOUT[self.pipeline] if not (path / part).exists()]
        if missing:
            raise ValueError(
                f"model_path {self.model_path}: missing {', '.join(missing)} "
                f"(a diffusers {self.pipeline} folder as save_pretrained writes it)"
            )
        text = self.pipeline == "stable_diffusion"
        if text and self.class_map is not None:
            raise ValueError("class_map: not used by stable_diffusion (use prompts)")
        if not text and (self.prompts is not None or self.negative_prompt is not None):
            raise ValueError(f"prompts: only stable_diffusion takes prompts, not {self.pipeline}")
        if self.pipeline in ("ddpm", "ddim"):
            if self.guidance_scale is not None and self.guidance_scale > 1:
                raise ValueError(f"guidance_scale: {self.pipeline} UNets have no null class for guidance")
            if self.scheduler != "default":
                raise ValueError(f"scheduler: the pipeline name {self.pipeline!r} already picks the scheduler")
        if self.pipeline == "dit" and self.image_size is not None:
            raise ValueError("image_size: a DiT samples at its trained resolution only")
        return self

    @property
    def guidance(self) -> float:
        """The guidance scale in use (1.0 means none)."""
        if self.guidance_scale is not None:
            return float(self.guidance_scale)
        return _DEFAULT_GUIDANCE.get(self.pipeline, 1.0)


def steps_for_degree(degree: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """Denoising steps a variation of ``degree`` runs: int(steps * degree), in [1, steps]; 0 for degree 0."""
    degree = np.asarray(degree, dtype=np.float64)
    steps = np.floor(num_inference_steps * degree + 1e-9).astype(np.int64)
    steps = np.clip(steps, 1, num_inference_steps)
    return np.where(degree > 0, steps, 0)


class DiffusionGenerator:
    """A diffusers model behind PE's ``random`` and ``variation`` (see the module docstring)."""

    modality = "image"
    Options = Options

    def __init__(self, options: Options | dict[str, Any], context: GeneratorContext | None) -> None:
        import torch

        self.options = options if isinstance(options, Options) else Options.model_validate(options)
        if context is None or context.modality != "image":
            raise ValueError("DiffusionGenerator: needs an image GeneratorContext (sample_shape, max_value, labels)")
        shape = tuple(int(s) for s in context.sample_shape)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
            raise ValueError(f"DiffusionGenerator: sample_shape must be (H, W) or (H, W, 1|3), got {shape}")
        self.context = context
        self._shape = shape
        self._channels = 1 if len(shape) == 2 else shape[2]
        self._max = float(context.max_value)

        device = context.device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"DiffusionGenerator: device {device!r} asked for but CUDA is not available")
        self.device = torch.device(device)
        dtype = self.options.dtype
        if dtype != "float32" and self.device.type == "cpu":
            warnings.warn(f"DiffusionGenerator: dtype {dtype} is for GPUs; using float32 on CPU", stacklevel=2)
            dtype = "float32"
        self.dtype = getattr(torch, dtype)
        self._torch = torch

        loader = {"ddpm": self._load_unet, "ddim": self._load_unet, "dit": self._load_dit}
        quiet_model_loading()
        loader.get(self.options.pipeline, self._load_sd)()
        self._check_conditioning()

    # -- loading ----------------------------------------------------------------------

    def _load_unet(self) -> None:
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

        path = self.options.model_path
        self.unet = UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        self.unet.to(self.device, self.dtype).eval().requires_grad_(False)
        cls = DDPMScheduler if self.options.pipeline == "ddpm" else DDIMScheduler
        self.scheduler = cls.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        self._latent = False
        self._model_channels = int(self.unet.config.in_channels)
        size = self.options.image_size or self.unet.config.sample_size
        self._resolution = (size, size) if isinstance(size, int) else tuple(size)
        self._num_classes = self.unet.config.num_class_embeds

    def _load_dit(self) -> None:
        from diffusers import DiTPipeline

        pipe = DiTPipeline.from_pretrained(self.options.model_path, local_files_only=True)
        self.transformer = pipe.transformer.to(self.device, self.dtype).eval().requires_grad_(False)
        self.vae = pipe.vae.to(self.device, self.dtype).eval().requires_grad_(False)
        self.scheduler = _scheduler("ddpm" if self.options.scheduler == "ddpm" else "ddim", pipe.scheduler.config)
        self._latent = True
        self._latent_channels = int(self.transformer.config.in_channels)
        self._model_channels = int(self.vae.config.in_channels)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = int(self.transformer.config.sample_size) * factor
        self._resolution = (size, size)
        self._num_classes = self.transformer.config.num_embeds_ada_norm

    def _load_sd(self) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        self.pipe = StableDiffusionPipeline.from_pretrained(
            self.options.model_path,
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        if self.options.scheduler != "default":
            self.pipe.scheduler = _scheduler(self.options.scheduler, self.pipe.scheduler.config)
        self.pipe.to(self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        for module in (self.pipe.unet, self.pipe.vae, self.pipe.text_encoder):
            module.eval().requires_grad_(False)
        # img2img shares every component (and the scheduler object) with text-to-image.
        self.img2img = StableDiffusionImg2ImgPipeline(**self.pipe.components)
        self.img2img.set_progress_bar_config(disable=True)
        self.scheduler = self.pipe.scheduler
        self._latent = True
        self._model_channels = 3
        factor = self.pipe.vae_scale_factor
        size = self.options.image_size or int(self.pipe.unet.config.sample_size) * factor
        if size % factor:
            raise ValueError(f"DiffusionGenerator: image_size {size} must be a multiple of {factor}")
        self._resolution = (size, size)
        self._num_classes = None
        self._embed_prompts()

    def _embed_prompts(self) -> None:
        """Each class prompt is encoded once, at load: batches reuse the embeddings."""
        prompts = dict(self.options.prompts or {})
        for label in self.context.labels:
            if label not in prompts:
                name = self.context.class_names.get(label)
                if name is None:
                    raise ValueError(f"DiffusionGenerator: label {label} has no prompt and no class name")
                prompts[label] = self.options.prompt_template.format(class_name=name)
        self.prompts = prompts
        guided = self.options.guidance > 1
        self._prompt_embeds: dict[int, tuple[Any, Any]] = {}
        with self._torch.inference_mode():
            for label, prompt in prompts.items():
                pos, neg = self.pipe.encode_prompt(
                    prompt, self.device, 1, guided, negative_prompt=self.options.negative_prompt
                )
                self._prompt_embeds[int(label)] = (pos, neg)

    def _check_conditioning(self) -> None:
        class_map = self.options.class_map
        if self.options.pipeline == "stable_diffusion":
            return
        if self._num_classes is None:
            if class_map is not None:
                raise ValueError(
                    f"DiffusionGenerator: class_map given but the model at {self.options.model_path} "
                    "is unconditional (no num_class_embeds)"
                )
            return
        if class_map is None:
            self._class_choices = None  # uniform over every model class, as PE-1's random API
            return
        missing = [label for label in self.context.labels if label not in class_map]
        if missing:
            raise ValueError(f"DiffusionGenerator: class_map has no entry for labels {missing}")
        choices = {}
        for label, ids in class_map.items():
            ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
            if np.any(ids >= self._num_classes):
                raise ValueError(
                    f"DiffusionGenerator: class_map[{label}] = {ids.tolist()}: the model has "
                    f"{self._num_classes} classes (0..{self._num_classes - 1})"
                )
            choices[int(label)] = ids
        self._class_choices = choices

    # -- the Generator protocol ------------------------------------------------------

    def random(self, labels: np.ndarray, seed: int) -> SampleBatch:
        """One fresh sample from the model for each label."""
        labels = self._check_labels(labels)
        n = len(labels)
        gen = self._generator(seed)
        class_ids = self._draw_class_ids(labels, np.random.default_rng(seed))
        out = np.empty((n, *self._shape), dtype=np.float32)
        bs = self.options.batch_size
        with self._torch.inference_mode():
            for start in range(0, n, bs):
                rows = slice(start, min(n, start + bs))
                if self.options.pipeline == "stable_diffusion":
                    images = self._sd_random(labels[rows], gen)
                else:
                    ids = class_ids[rows] if class_ids is not None else None
                    images = self._sample(None, None, ids, gen, rows.stop - rows.start)
                out[rows] = self._from_model(images)
        return SampleBatch(labels=labels, samples=out, params=self._params(class_ids))

    def variation(self, parents: SampleBatch, degree: float | np.ndarray, seed: int) -> SampleBatch:
        """SDEdit of each parent at its ``degree`` (scalar or per row) in [0, 1]."""
        labels = self._check_labels(parents.labels)
        n = len(labels)
        degree = np.broadcast_to(np.asarray(degree, dtype=np.float64), (n,))
        if np.any(~np.isfinite(degree)) or np.any(degree < 0) or np.any(degree > 1):
            raise ValueError("DiffusionGenerator.variation: degree must lie in [0, 1]")
        samples = np.asarray(parents.samples)
        if samples.shape[1:] != self._shape:
            raise ValueError(
                f"DiffusionGenerator.variation: parents have shape {samples.shape[1:]}, expected {self._shape}"
            )
        gen = self._generator(seed)
        class_ids = None
        if self._num_classes is not None and self.options.pipeline != "stable_diffusion":
            kept = parents.params.get("class_id")
            rng = np.random.default_rng(seed)
            class_ids = (
                np.asarray(kept, dtype=np.int64)
                if kept is not None and self._valid_ids(np.asarray(kept))
                else self._draw_class_ids(labels, rng)
            )
        steps = steps_for_degree(degree, self.options.num_inference_steps)
        out = np.clip(samples.astype(np.float32), 0.0, self._max)  # degree 0: copies
        bs = self.options.batch_size
        with self._torch.inference_mode():
            for k in np.unique(steps[steps > 0]):
                group = np.flatnonzero(steps == k)
                for start in range(0, len(group), bs):
                    rows = group[start : start + bs]
                    x0 = self._to_model(samples[rows])
                    if self.options.pipeline == "stable_diffusion":
                        images = self._sd_variation(labels[rows], x0, int(k), gen)
                    else:
                        ids = class_ids[rows] if class_ids is not None else None
                        images = self._sample(x0, int(k), ids, gen, len(rows))
                    out[rows] = self._from_model(images)
        return SampleBatch(labels=labels, samples=out, params=self._params(class_ids))

    # -- sampling ---------------------------------------------------------------------

    def _sample(self, x0, steps: int | None, class_ids: np.ndarray | None, gen, b: int):
        """Images in [0, 1], (b, C, h, w): from pure noise (x0 None) or SDEdit from x0 over ``steps`` steps."""
        torch = self._torch
        sched = self.scheduler
        total = self.options.num_inference_steps
        sched.set_timesteps(total)  # CPU timesteps, as diffusers' DDIM/DiT pipelines keep them
        timesteps = sched.timesteps
        start = 0 if x0 is None else total - steps
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start * sched.order)
        cond = None if class_ids is None else torch.as_tensor(class_ids, dtype=torch.long, device=self.device)
        h, w = self._resolution
        if self._latent:
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            shape = (b, self._latent_channels, h // factor, w // factor)
        else:
            shape = (b, self._model_channels, h, w)
        noise = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)
        if x0 is None:
            x = noise * sched.init_noise_sigma
        else:
            z0 = self._encode(x0 * 2 - 1, gen) if self._latent else (x0 * 2 - 1).to(self.dtype)
            t0 = timesteps[start : start + 1].repeat(b)
            x = sched.add_noise(z0, noise, t0)
        step_kwargs = {"generator": gen}
        if "eta" in _step_params(sched):
            step_kwargs["eta"] = self.options.eta
        for t in timesteps[start:]:
            model_in = sched.scale_model_input(x, t)
            output = self._predict(model_in, t, cond)
            x = sched.step(output, t, x, **step_kwargs).prev_sample
        if self._latent:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return (x.float() + 1) / 2

    def _predict(self, x, t, cond):
        """The model output the scheduler steps with (guided, learned variance handled)."""
        torch = self._torch
        b, c = x.shape[:2]
        guidance = self.options.guidance if self.options.pipeline == "dit" else 1.0
        guided = guidance > 1 and cond is not None
        timestep = t.reshape(1).expand(2 * b if guided else b).to(self.device)
        if self.options.pipeline == "dit":
            labels = cond if cond is not None else torch.zeros(b, dtype=torch.long, device=self.device)
            if guided:
                null = torch.full_like(labels, int(self._num_classes))
                x, labels = torch.cat([x, x]), torch.cat([labels, null])
            out = self.transformer(x, timestep=timestep, class_labels=labels).sample
        else:
            out = self.unet(x, timestep, class_labels=cond).sample
        eps, rest = out[:, :c], out[:, c:]
        if guided:
            cond_eps, uncond_eps = eps.chunk(2)
            eps = uncond_eps + guidance * (cond_eps - uncond_eps)
            rest = rest[:b]
        learned = self.scheduler.config.get("variance_type") in ("learned", "learned_range")
        if rest.shape[1] == c and learned:
            return torch.cat([eps, rest], dim=1)
        return eps

    def _encode(self, x, gen):
        dist = self.vae.encode(x.to(self.dtype)).latent_dist
        return dist.sample(generator=gen) * self.vae.config.scaling_factor

    def _sd_batch_embeds(self, labels: np.ndarray):
        torch = self._torch
        pos = torch.cat([self._prompt_embeds[int(label)][0] for label in labels])
        negs = [self._prompt_embeds[int(label)][1] for label in labels]
        neg = None if negs[0] is None else torch.cat(negs)
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg}

    def _sd_random(self, labels: np.ndarray, gen):
        h, w = self._resolution
        return self.pipe(
            **self._sd_batch_embeds(labels),
            height=h,
            width=w,
            num_inference_steps=self.options.num_inference_steps,
            guidance_scale=self.options.guidance,
            generator=gen,
            output_type="pt",
            eta=self.options.eta,
        ).images

    def _sd_variation(self, labels: np.ndarray, x0, steps: int, gen):
        total = self.options.num_inference_steps
        strength = min(1.0, (steps + 0.5) / total)  # int(total * strength) == steps
        return self.img2img(
            **self._sd_batch_embeds(labels),
            image=x0.to(self.dtype),
            strength=strength,
            num_inference_steps=total,
            guidance_scale=self.options.guidance,
            generator=gen,
            output_type="pt",
            eta=self.options.eta,
        ).images

    # -- images in and out -----------------------------------------------------------

    def _to_model(self, images: np.ndarray):
        """Private-shaped images in [0, max] -> (n, C_model, h, w) in [0, 1] at the model's resolution."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        x = (x / self._max).clamp(0, 1)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[1] != self._model_channels:
            x = x.mean(dim=1, keepdim=True).expand(-1, self._model_channels, -1, -1)
        return _resize(torch, x, self._resolution).clamp(0, 1)

    def _from_model(self, images) -> np.ndarray:
        """(n, C_model, h, w) in [0, 1] -> float32 (n, *sample_shape) in [0, max]."""
        torch = self._torch
        x = _resize(torch, images.float().clamp(0, 1), self._shape[:2])
        if x.shape[1] != self._channels:
            x = x.mean(dim=1, keepdim=True).expand(-1, self._channels, -1, -1)
        x = x.clamp(0, 1) * self._max
        x = x[:, 0] if len(self._shape) == 2 else x.permute(0, 2, 3, 1)
        return x.contiguous().cpu().numpy().astype(np.float32, copy=False)

    # -- helpers --------------------------------------------------------------------

    def _generator(self, seed: int):
        gen = self._torch.Generator(device=self.device)
        gen.manual_seed(int(seed) % (2**63))
        return gen

    def _check_labels(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        unknown = sorted(set(labels.tolist()) - set(self.context.labels))
        if unknown:
            raise ValueError(f"DiffusionGenerator: labels {unknown} are not in the context's labels")
        return labels

    def _draw_class_ids(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        if self._num_classes is None or self.options.pipeline == "stable_diffusion":
            return None
        if self._class_choices is None:
            return rng.integers(0, self._num_classes, size=len(labels))
        out = np.empty(len(labels), dtype=np.int64)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            ids = self._class_choices[int(label)]
            out[rows] = ids[rng.integers(0, len(ids), size=len(rows))]
        return out

    def _valid_ids(self, ids: np.ndarray) -> bool:
        return ids.ndim == 1 and np.all((ids >= 0) & (ids < self._num_classes))

    @staticmethod
    def _params(class_ids: np.ndarray | None) -> dict[str, np.ndarray]:
        return {} if class_ids is None else {"class_id": np.asarray(class_ids, dtype=np.int64)}


def _resize(torch, x, size: tuple[int, int]):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def _scheduler(kind: str, config):
    """A DDIM or DDPM scheduler with the noise schedule of ``config`` (another scheduler's config)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    # SD's PNDM config has no clip_sample; latent models must not clip to [-1, 1]
    return cls.from_config(config, clip_sample=config.get("clip_sample", False))


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
