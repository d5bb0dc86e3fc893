"""GPU suite: what one GPU does for PE, and what a DP synthetic dataset costs on it.

Run where a GPU exists (``python -m benchmarks.gpu``, or the harness's ``gpu`` suite);
writes ``benchmarks/results/gpu.json`` and ``gpu.png``. Measured, on the device named
in the results:

* **GEMM roofline**: float32 (full precision), TF32 and bfloat16 matrix products;
* **voting**: privevo's exact kNN vote search on the GPU (``actors.knn.exact_knn`` with
  ``device="cuda"``: FAISS's GPU brute force where the FAISS build has GPU support,
  torch otherwise) in private x synthetic pairs per second, as a fraction of the
  float32 GEMM rate (2 d flops per pair);
* **generation**: images/s per GPU through privevo's diffusion generator (the class the
  generator actor runs; ``random`` and SDEdit ``variation``) against a bare diffusers
  sampling loop with the same model, scheduler, steps, batch size and dtype, for a
  CIFAR-10-size class-conditional DDPM UNet (the google/ddpm-cifar10-32 architecture,
  35.7M parameters) and, unless ``quick``, an ImageNet-size DiT-XL/2 at 256x256 with
  its VAE (as PE used for ImageNet); weights are random (no download is possible
  here), which does not change the cost of a forward pass;
* **embedding**: images/s of the FID Inception-v3 embedder (2048-d) on 32x32 inputs
  resized to 299x299;
* **GPU busy**: NVML utilisation sampled while each stage runs (``nvidia-ml-py``).

From these, the GPU-seconds of one PE generation at CIFAR-10 size (50,000 private
images, a population of 50,000: 5,000 per class; variation at the given degree) and an
extrapolation to ImageNet size with the formula in the results (``cost``):

    seconds per generation = N_syn * (t_variation + t_embed) + sum_c n_priv,c * n_syn,c * 2 d / R_vote
    one-off                = N_priv * t_embed  (the private set is embedded once)

where t_* are measured seconds per image and R_vote the measured vote flop rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- helpers


class _Clock:
    """Wall seconds of GPU work (synchronised before and after)."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    @contextlib.contextmanager
    def time(self, out: dict[str, float], key: str = "seconds"):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        out[key] = time.perf_counter() - t0


class BusySampler:
    """Fraction of a block's wall time the GPU was busy: the run's own NVML metering
    (:class:`pipelines.gpu_utilization.UtilizationSampler`); None where NVML is not available."""

    def __init__(self, device: str) -> None:
        self.sampler = None
        if device.startswith("cuda"):
            try:
                from privevo.pipelines.gpu_utilization import UtilizationSampler, nvml_reader

                index = int(device.split(":", 1)[1]) if ":" in device else 0
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # torch's index counts these entries
                entry = visible.split(",")[index] if visible else str(index)
                self.sampler = UtilizationSampler(nvml_reader(entry), interval=0.02)
            except Exception:  # noqa: BLE001 - NVML missing or no permission: report no utilisation
                self.sampler = None

    @contextlib.contextmanager
    def sample(self, out: dict[str, Any], key: str = "gpu_busy_fraction"):
        if self.sampler is None:
            out[key] = None
            yield
            return
        start = self.sampler.open()
        try:
            yield
        finally:
            busy = self.sampler.close(start)
            wall = time.perf_counter() - start  # the sampler's clock
            out[key] = busy / wall if wall > 0 else None


def _machine(device: str) -> dict[str, Any]:
    """The harness's machine description, plus the GPU (name, memory, CUDA, driver)."""
    import torch

    from benchmarks.common import machine

    info: dict[str, Any] = {**machine(), "device": device, "torch": torch.__version__}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
    else:
        info["gpu"] = None
        info["cpu_threads"] = torch.get_num_threads()
    with contextlib.suppress(ImportError):
        info["diffusers"] = __import__("diffusers").__version__
    return info


# --------------------------------------------------------------------------- GEMM


def gemm_rates(device: str, n: int, repeats: int = 10) -> dict[str, float]:
    """TFLOP/s of an n x n x n matrix product: float32 (full), TF32 and bfloat16."""
    import torch

    clock = _Clock(device)
    out = {}
    cases = [("float32", torch.float32, "highest"), ("tf32", torch.float32, "high"), ("bfloat16", torch.bfloat16, "highest")]
    if not device.startswith("cuda"):
        cases = cases[:1]
    previous = torch.get_float32_matmul_precision()
    try:
        for name, dtype, precision in cases:
            torch.set_float32_matmul_precision(precision)
            gen = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
            for _ in range(3):
                a @ b
            timing: dict[str, float] = {}
            with clock.time(timing):
                for _ in range(repeats):
                    a @ b
            out[name] = 2 * n**3 * repeats / timing["seconds"] / 1e12
    finally:
        torch.set_float32_matmul_precision(previous)
    return out


# --------------------------------------------------------------------------- voting


def vote_rate(device: str, n_private: int, n_synthetic: int, dim: int, k: int = 4,
              busy: BusySampler | None = None) -> dict[str, Any]:
    """Pairs/s and flop rate of privevo's exact kNN vote search on ``device``."""
    import torch

    from privevo.actors.knn import exact_knn, faiss_gpu_ready

    rng = np.random.default_rng(0)
    private = rng.standard_normal((n_private, dim), dtype=np.float32)
    synthetic = rng.standard_normal((n_synthetic, dim), dtype=np.float32)
    exact_knn(private[:256], synthetic, k, backend="faiss", device=device)  # warm-up (kernels, resources)
    out: dict[str, Any] = {"n_private": n_private, "n_synthetic": n_synthetic, "dim": dim, "k": k,
                           "search": "faiss-gpu" if device.startswith("cuda") and faiss_gpu_ready() else
                           ("torch-" + device if device.startswith("cuda") else "faiss-cpu")}
    clock = _Clock(device)
    with (busy.sample(out) if busy else contextlib.nullcontext()), clock.time(out):
        idx = exact_knn(private, synthetic, k, backend="faiss", device=device)
    assert idx.shape == (n_private, k)
    pairs = n_private * n_synthetic
    out["pairs_per_second"] = pairs / out["seconds"]
    out["tflops"] = 2 * dim * pairs / out["seconds"] / 1e12
    del torch
    return out


# --------------------------------------------------------------------------- diffusion


def _cifar_unet_folder(root: Path, quick: bool) -> Path:
    """A class-conditional DDPM UNet with the google/ddpm-cifar10-32 architecture, random weights."""
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    if quick:
        unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                           block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=10)
    else:
        unet = UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
            block_out_channels=(128, 256, 256, 256),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            num_class_embeds=10,
        )
    path = root / "cifar-unet"
    unet.save_pretrained(path / "unet")
    DDIMScheduler(num_train_timesteps=1000).save_pretrained(path / "scheduler")
    return path


def _dit_folder(root: Path, quick: bool) -> Path:
    """DiT-XL/2 at 256x256 (latent 32x32) with an SD-style VAE, random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DiTPipeline,
        DiTTransformer2DModel,
    )

    torch.manual_seed(0)
    if quick:
        transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                            out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                            num_embeds_ada_norm=1000)
        vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                            sample_size=16)
    else:
        transformer = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4,
                                            out_channels=8, num_layers=28, sample_size=32, patch_size=2,
                                            num_embeds_ada_norm=1000)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=256)
    path = root / "dit"
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path


def _bare_unet_loop(path: Path, device: str, dtype: str, steps: int, batch: int, n: int, seed: int) -> None:
    """The reference: diffusers' UNet and DDIM scheduler in a plain sampling loop."""
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(path, subfolder="unet").to(device, getattr(torch, dtype)).eval()
    sched = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
    sched.set_timesteps(steps)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, n, batch):
            b = min(batch, n - start)
            x = torch.randn((b, 3, 32, 32), generator=gen, device=device, dtype=unet.dtype)
            labels = torch.arange(b, device=device) % 10
            for t in sched.timesteps:
                eps = unet(x, t, class_labels=labels).sample
                x = sched.step(eps, t, x).prev_sample
            ((x.float() + 1) / 2).clamp(0, 1).cpu()


def _generator(path: Path, pipeline: str, device: str, dtype: str, steps: int, batch: int, shape, labels):
    from privevo.actors.generators.base import GeneratorContext
    from privevo.actors.generators.diffusion import DiffusionGenerator

    context = GeneratorContext(modality="image", sample_shape=shape, max_value=255.0, labels=tuple(labels),
                               class_names={c: str(c) for c in labels}, device=device)
    options = {"pipeline": pipeline, "model_path": str(path), "num_inference_steps": steps, "batch_size": batch,
               "dtype": dtype, "class_map": {c: c for c in labels}}
    if pipeline == "dit":
        options["guidance_scale"] = 4.0
    return DiffusionGenerator(options, context)


def diffusion_rates(root: Path, device: str, quick: bool, busy: BusySampler) -> dict[str, Any]:
    """Images/s through privevo's generator vs a bare diffusers loop (CIFAR-size UNet)."""
    from privevo.actors.generators.base import SampleBatch

    dtype = "float16" if device.startswith("cuda") else "float32"
    steps, batch, n = (4, 16, 32) if quick else (50, 500, 2000)
    degree = 0.5
    path = _cifar_unet_folder(root, quick)
    clock = _Clock(device)
    labels = np.arange(n) % 10
    out: dict[str, Any] = {"model": "ddpm-cifar10-32 architecture (35.7M parameters)" if not quick else "tiny UNet",
                           "dtype": dtype, "steps": steps, "batch_size": batch, "images": n,
                           "variation_degree": degree}
    gen = _generator(path, "ddim", device, dtype, steps, batch, (32, 32, 3), range(10))
    gen.random(labels[:batch], seed=1)  # warm-up
    rand: dict[str, Any] = {}
    with busy.sample(rand), clock.time(rand):
        parents = gen.random(labels, seed=2)
    var: dict[str, Any] = {}
    with busy.sample(var), clock.time(var):
        gen.variation(SampleBatch(labels=parents.labels, samples=parents.samples, params=parents.params), degree, 3)
    del gen
    _bare_unet_loop(path, device, dtype, steps, batch, batch, seed=4)  # warm-up
    bare: dict[str, Any] = {}
    with busy.sample(bare), clock.time(bare):
        _bare_unet_loop(path, device, dtype, steps, batch, n, seed=5)
    out["generator_random"] = {**rand, "images_per_second": n / rand["seconds"]}
    var_steps = max(1, int(steps * degree))
    out["generator_variation"] = {**var, "images_per_second": n / var["seconds"], "denoising_steps": var_steps}
    out["bare_diffusers_loop"] = {**bare, "images_per_second": n / bare["seconds"]}
    out["generator_over_bare"] = out["generator_random"]["images_per_second"] / out["bare_diffusers_loop"]["images_per_second"]
    return out


def dit_rates(root: Path, device: str, quick: bool, busy: BusySampler) -> dict[str, Any]:
    """Images/s of an ImageNet-size DiT-XL/2 (256x256, guidance 4) through privevo's generator."""
    from privevo.actors.generators.base import SampleBatch

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    steps, batch, n = (2, 4, 8) if quick else (50, 64, 128)
    path = _dit_folder(root, quick)
    size = 16 if quick else 256
    gen = _generator(path, "dit", device, dtype, steps, batch, (size, size, 3), range(10))
    labels = np.arange(n) % 10
    gen.random(labels[:batch], seed=1)
    clock = _Clock(device)
    rand: dict[str, Any] = {}
    with busy.sample(rand), clock.time(rand):
        parents = gen.random(labels, seed=2)
    var: dict[str, Any] = {}
    with busy.sample(var), clock.time(var):
        gen.variation(SampleBatch(labels=parents.labels, samples=parents.samples, params=parents.params), 0.5, 3)
    return {
        "model": "DiT-XL/2 256x256 + VAE (random weights)" if not quick else "tiny DiT",
        "dtype": dtype, "steps": steps, "batch_size": batch, "images": n, "guidance_scale": 4.0,
        "generator_random": {**rand, "images_per_second": n / rand["seconds"]},
        "generator_variation": {**var, "images_per_second": n / var["seconds"], "denoising_steps": max(1, steps // 2)},
    }


def embed_rate(root: Path, device: str, quick: bool, busy: BusySampler) -> dict[str, Any]:
    """Images/s of the FID Inception embedder on 32x32 images (resized to 299x299)."""
    import torch

    from privevo.actors.embedders import make_embedder
    from privevo.actors.embedders.inception import build_fid_inception

    weights = root / "inception.pth"
    torch.manual_seed(0)
    torch.save(build_fid_inception().state_dict(), weights)
    batch, n = (8, 16) if quick else (500, 5000)
    embedder = make_embedder("inception", 255.0, {"model_path": str(weights), "batch_size": batch}, device)
    images = np.random.default_rng(0).uniform(0, 255, size=(n, 32, 32, 3)).astype(np.float32)
    embedder.embed(images[:batch])
    out: dict[str, Any] = {"images": n, "batch_size": batch, "dim": 2048}
    with busy.sample(out), _Clock(device).time(out):
        features = embedder.embed(images)
    assert features.shape == (n, 2048)
    out["images_per_second"] = n / out["seconds"]
    return out


# --------------------------------------------------------------------------- cost model


def generation_cost(t_variation: float, t_embed: float, vote_flops_per_second: float, *, n_private: int,
                    n_synthetic: int, classes: int, dim: int) -> dict[str, float]:
    """GPU-seconds of one PE generation from per-image costs (see the module docstring)."""
    per_class_private, per_class_synthetic = n_private / classes, n_synthetic / classes
    vote = classes * per_class_private * per_class_synthetic * 2 * dim / vote_flops_per_second
    generate, embed = n_synthetic * t_variation, n_synthetic * t_embed
    seconds = generate + embed + vote
    return {
        "n_private": n_private, "n_synthetic": n_synthetic, "classes": classes, "dim": dim,
        "generate_seconds": generate, "embed_seconds": embed, "vote_seconds": vote,
        "gpu_seconds_per_generation": seconds,
        "gpu_hours_per_generation": seconds / 3600,
        "gpu_hours_per_1000_samples": seconds / 3600 / (n_synthetic / 1000),
        "one_off_private_embedding_gpu_hours": n_private * t_embed / 3600,
    }


def run(results_dir: Path = RESULTS, quick: bool = False, device: str | None = None) -> dict[str, Any]:
    """Run the GPU suite; write ``gpu.json`` and ``gpu.png`` into ``results_dir``."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    busy = BusySampler(device)
    result: dict[str, Any] = {"suite": "gpu", "quick": quick, "machine": _machine(device), "errors": {}}
    t0 = time.perf_counter()

    def section(name: str, fn, *args):
        start = time.perf_counter()
        try:
            result[name] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others' numbers
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"[gpu] {name}: {time.perf_counter() - start:.1f} s", flush=True)

    section("gemm_tflops", gemm_rates, device, 512 if quick else 8192)
    sizes = [(2000, 2000, 64)] if quick else [(50_000, 50_000, 256), (50_000, 50_000, 2048), (5_000, 5_000, 2048)]
    result["voting"] = []
    for n_p, n_s, d in sizes:
        try:
            v = vote_rate(device, n_p, n_s, d, busy=busy)
            fp32 = result.get("gemm_tflops", {}).get("float32")
            v["fraction_of_fp32_gemm"] = v["tflops"] / fp32 if fp32 else None
            result["voting"].append(v)
        except Exception as exc:  # noqa: BLE001
            result["errors"][f"voting {n_p}x{n_s}x{d}"] = f"{type(exc).__name__}: {exc}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        section("diffusion", diffusion_rates, root, device, quick, busy)
        section("embedding", embed_rate, root, device, quick, busy)
        section("dit", dit_rates, root, device, quick, busy)

    result["cost"] = _costs(result)
    result["seconds"] = time.perf_counter() - t0
    (results_dir / "gpu.json").write_text(json.dumps(result, indent=2))
    _plot(result, results_dir / "gpu.png")
    return result


def _costs(result: dict[str, Any]) -> dict[str, Any]:
    """GPU-hours of a PE generation at CIFAR-10 size, and extrapolated to ImageNet size."""
    diffusion, embedding = result.get("diffusion"), result.get("embedding")
    votes = [v for v in result.get("voting", []) if v["dim"] == 2048] or result.get("voting", [])
    if not diffusion or not embedding or not votes:
        return {"note": "not computed: a section it needs failed"}
    t_var = 1.0 / diffusion["generator_variation"]["images_per_second"]
    t_embed = 1.0 / embedding["images_per_second"]
    vote_rate_flops = max(v["tflops"] for v in votes) * 1e12
    out = {
        "formula": "per generation: N_syn * (t_variation + t_embed) + sum_c n_priv,c * n_syn,c * 2 d / R_vote; "
                   "once: N_priv * t_embed",
        "t_variation_seconds_per_image_cifar": t_var,
        "t_embed_seconds_per_image": t_embed,
        "vote_tflops": vote_rate_flops / 1e12,
        "cifar10": generation_cost(t_var, t_embed, vote_rate_flops, n_private=50_000, n_synthetic=50_000,
                                   classes=10, dim=2048),
    }
    dit = result.get("dit")
    if dit:
        t_dit = 1.0 / dit["generator_variation"]["images_per_second"]
        out["t_variation_seconds_per_image_imagenet_dit"] = t_dit
        out["imagenet"] = generation_cost(t_dit, t_embed, vote_rate_flops, n_private=1_281_167,
                                          n_synthetic=1_000_000, classes=1000, dim=2048)
        out["imagenet"]["generator"] = "DiT-XL/2 256x256, SDEdit at the measured degree, guidance 4"
    else:
        out["imagenet"] = generation_cost(t_var, t_embed, vote_rate_flops, n_private=1_281_167,
                                          n_synthetic=1_000_000, classes=1000, dim=2048)
        out["imagenet"]["generator"] = "CIFAR-size UNet cost per image (no DiT measurement): a lower bound"
    return out


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    diffusion = result.get("diffusion")
    if diffusion:
        names = ["generator random", "generator variation", "bare diffusers loop"]
        rates = [diffusion["generator_random"]["images_per_second"],
                 diffusion["generator_variation"]["images_per_second"],
                 diffusion["bare_diffusers_loop"]["images_per_second"]]
        axes[0].barh(names, rates, color=["C0", "C0", "C7"])
        axes[0].set_xlabel(f"images/s ({diffusion['steps']} DDIM steps, batch {diffusion['batch_size']})")
    votes = result.get("voting", [])
    if votes:
        labels = [f"{v['n_private'] // 1000}k x {v['n_synthetic'] // 1000}k, d={v['dim']}" for v in votes]
        axes[1].barh(labels, [v.get("fraction_of_fp32_gemm") or 0 for v in votes], color="C1")
        axes[1].set_xlabel("vote search, fraction of float32 GEMM rate")
        axes[1].set_xlim(0, 1)
    fig.suptitle(f"privevo on {result['machine'].get('gpu') or 'CPU'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (a smoke run)")
    parser.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args(argv)
    result = run(Path(args.out), quick=args.quick, device=args.device)
    summary = {k: result[k] for k in ("machine", "gemm_tflops", "errors") if k in result}
    print(json.dumps(summary, indent=1))
    if math.isfinite(result["seconds"]):
        print(f"[gpu] done in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
