"""The diffusion generator on tiny random diffusers models (CPU, offline, seconds)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.generators.diffusion import DiffusionGenerator, Options, steps_for_degree
from tiny_diffusion import build_tiny_ddim, build_tiny_dit, build_tiny_sd

ROOT = Path(__file__).resolve().parents[1]
NAMES = {0: "cat", 1: "dog", 2: "ship"}
RGB = GeneratorContext("image", (12, 12, 3), 255.0, (0, 1, 2), NAMES)
GRAY = GeneratorContext("image", (8, 8), 16.0, (0, 1, 2), NAMES)
CLASS_MAP = {0: 1, 1: [2, 3], 2: 4}
STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "ddim": build_tiny_ddim(root / "ddim"),
        "ddim_cond": build_tiny_ddim(root / "ddim_cond", num_classes=5),
        "ddpm_sigma": build_tiny_ddim(root / "ddpm", num_classes=5, scheduler="ddpm", learned_sigma=True),
        "no_eps": build_tiny_ddim(root / "no_eps", output_scale=0.0),
        "dit": build_tiny_dit(root / "dit", num_classes=5),
        "sd": build_tiny_sd(root / "sd"),
    }


# (model, Options fields) of each generator the tests load
SETUPS = {
    "ddim": ("ddim", {"pipeline": "ddim"}),
    "ddim_cond": ("ddim_cond", {"pipeline": "ddim", "class_map": CLASS_MAP}),
    "ddpm_sigma": ("ddpm_sigma", {"pipeline": "ddpm"}),
    "dit": ("dit", {"pipeline": "dit", "class_map": CLASS_MAP}),
    "sd": ("sd", {"pipeline": "stable_diffusion", "prompts": {2: "a boat at sea"}}),
}


def make(models, setup: str, context: GeneratorContext = RGB, **extra) -> DiffusionGenerator:
    model, fields = SETUPS[setup]
    options = {"model_path": str(models[model]), "num_inference_steps": STEPS, "batch_size": 4, **fields, **extra}
    return DiffusionGenerator(Options.model_validate(options), context)


LABELS = np.array([0, 1, 2, 1, 0, 2, 2])


# -- (1) random: shape, dtype, range, labels ------------------------------------------


@pytest.mark.parametrize("setup", ["ddim", "ddim_cond", "ddpm_sigma", "dit", "sd"])
@pytest.mark.parametrize("context", [RGB, GRAY], ids=["rgb", "gray"])
def test_random_images_have_the_private_shape_and_range(models, setup, context):
    batch = make(models, setup, context).random(LABELS, seed=1)
    assert np.array_equal(batch.labels, LABELS)
    assert batch.samples.shape == (len(LABELS), *context.sample_shape)
    assert batch.samples.dtype == np.float32
    assert batch.samples.min() >= 0 and batch.samples.max() <= context.max_value
    assert batch.samples.std() > 0.01 * context.max_value  # real images, not a constant fill
    assert not np.allclose(batch.samples[0], batch.samples[4])  # same label, different draws


@pytest.mark.parametrize("setup", ["ddim", "sd"])
def test_grayscale_is_the_mean_of_rgb(models, setup):
    gray = GeneratorContext("image", (12, 12), 255.0, (0, 1, 2), NAMES)
    rgb = make(models, setup, RGB).random(LABELS[:3], seed=6).samples
    one = make(models, setup, gray).random(LABELS[:3], seed=6).samples
    np.testing.assert_allclose(one, rgb.mean(axis=-1), atol=1e-3)
    assert np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max() > 1  # the channels differ: a real test


@pytest.mark.parametrize("setup", ["ddim_cond", "dit"])
def test_class_conditional_models_draw_ids_from_the_class_map(models, setup):
    batch = make(models, setup).random(np.repeat([0, 1, 2], 20), seed=2)
    ids = batch.params["class_id"]
    assert set(ids[:20]) == {1} and set(ids[20:40]) == {2, 3} and set(ids[40:]) == {4}
    # variations keep their parent's model class
    child = make(models, setup).variation(batch.take(np.arange(0, 60, 7)), 0.5, seed=3)
    assert np.array_equal(child.params["class_id"], ids[np.arange(0, 60, 7)])


def test_class_id_changes_the_image(models):
    gen = make(models, "ddim_cond", class_map={0: 0, 1: 4, 2: 4})
    a = gen.random(np.array([0, 0]), seed=5).samples
    b = gen.random(np.array([1, 1]), seed=5).samples
    assert not np.allclose(a, b, atol=1e-3)  # same noise, other class embedding


@pytest.mark.parametrize("setup", ["dit", "sd"])
def test_guidance_scale_is_applied(models, setup):
    plain = make(models, setup, guidance_scale=1.0).random(LABELS[:3], seed=7).samples
    guided = make(models, setup, guidance_scale=4.0).random(LABELS[:3], seed=7).samples
    assert not np.allclose(plain, guided, atol=1e-3)


def test_output_resize_is_antialiased(models):
    import torch

    gen = make(models, "ddim", GRAY)  # the model makes 16x16 RGB, the private set is 8x8 gray
    noise = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = gen._from_model(noise) / GRAY.max_value
    assert out.shape == (64, 8, 8)
    # the mean of 3 channels of U(0, 1) noise has std 0.167; a 2x2 bilinear tap leaves 0.083, an
    # antialiased (triangle, 4 taps per axis) filter 0.052
    assert out.std() < 0.065, out.std()


def test_prompts_default_to_class_names(models):
    gen = make(models, "sd")
    assert gen.prompts == {0: "a photo of a cat", 1: "a photo of a dog", 2: "a boat at sea"}
    a = gen.random(np.array([0, 0]), seed=5).samples
    b = gen.random(np.array([1, 1]), seed=5).samples
    assert not np.allclose(a, b, atol=1e-3)  # same noise, other prompt


def test_unconditional_models_have_no_params(models):
    assert make(models, "ddim").random(LABELS, seed=0).params == {}
    assert make(models, "sd").random(LABELS[:2], seed=0).params == {}


# -- (2) seeds --------------------------------------------------------------------------


@pytest.mark.parametrize("setup", ["ddim_cond", "ddpm_sigma", "dit", "sd"])
def test_same_seed_same_images_other_seed_other_images(models, setup):
    gen = make(models, setup)
    first = gen.random(LABELS, seed=11)
    again = make(models, setup).random(LABELS, seed=11)  # a retried shard on a fresh actor
    other = gen.random(LABELS, seed=12)
    assert np.array_equal(first.samples, again.samples)
    assert not np.allclose(first.samples, other.samples)
    v1 = gen.variation(first, 0.5, seed=13)
    v2 = make(models, setup).variation(first, 0.5, seed=13)
    v3 = gen.variation(first, 0.5, seed=14)
    assert np.array_equal(v1.samples, v2.samples)
    assert not np.allclose(v1.samples, v3.samples)


# -- (3) degree: SDEdit noise level ----------------------------------------------------------


def _smooth_parents(n: int, context: GeneratorContext) -> SampleBatch:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    raw = rng.random((n, *context.sample_shape))
    sigma = (0, 2, 2, 0)[: raw.ndim]
    images = gaussian_filter(raw, sigma)
    images = (images - images.min()) / np.ptp(images) * context.max_value
    return SampleBatch(labels=np.zeros(n, dtype=np.int64), samples=images.astype(np.float32))


def test_larger_degree_moves_variations_farther(models):
    # The "no_eps" UNet predicts zero noise, so DDIM returns x0 + sqrt((1-a_t)/a_t) * noise
    # for the start timestep t the degree selects: distance grows with the degree.
    gen = make(models, "ddim", model_path=str(models["no_eps"]), num_inference_steps=10, batch_size=64)
    parents = _smooth_parents(64, RGB)
    dist = [np.abs(gen.variation(parents, d, seed=4).samples - parents.samples).mean() for d in (0.1, 0.5, 1.0)]
    assert dist[0] < 0.02 * 255 and dist[0] * 5 < dist[1] and dist[1] * 1.1 < dist[2], dist
    # a random-weight model too: a small degree stays near the parent, a large one does not
    gen = make(models, "ddim", num_inference_steps=10, batch_size=64)
    dist = [np.abs(gen.variation(parents, d, seed=4).samples - parents.samples).mean() for d in (0.1, 0.5)]
    assert dist[0] * 5 < dist[1], dist


def _count_calls(module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda mod, args, out: calls.append(1))
    return calls


@pytest.mark.parametrize("setup", ["dit", "sd", "ddpm_sigma"])
def test_degree_sets_the_number_of_denoising_steps(models, setup):
    extra = {"scheduler": "ddim"} if setup == "sd" else {}  # PNDM (SD's default) adds a warm-up step
    gen = make(models, setup, num_inference_steps=10, batch_size=64, **extra)
    model = {"dit": lambda: gen.transformer, "sd": lambda: gen.pipe.unet}.get(setup, lambda: gen.unet)()
    calls = _count_calls(model)
    parents = gen.random(np.array([0, 1, 2]), seed=0)
    calls.clear()
    for degree, steps in [(0.1, 1), (0.5, 5), (1.0, 10), (0.05, 1), (0.0, 0)]:
        before = len(calls)
        gen.variation(parents, degree, seed=1)
        assert len(calls) - before == steps, (degree, len(calls) - before)


def test_steps_for_degree():
    assert steps_for_degree(np.array([0.0, 0.01, 0.1, 0.3, 0.5, 0.99, 1.0]), 10).tolist() == [0, 1, 1, 3, 5, 9, 10]
    assert steps_for_degree(np.array([0.6, 0.98]), 100).tolist() == [60, 98]


# -- (5) per-row degrees ---------------------------------------------------------------------


def test_per_row_degrees(models):
    gen = make(models, "ddim", model_path=str(models["no_eps"]), num_inference_steps=10, batch_size=8)
    parents = _smooth_parents(30, RGB)
    degree = np.tile([0.0, 0.1, 0.5, 1.0, 0.5], 6)
    out = gen.variation(parents, degree, seed=9)
    assert out.samples.shape == parents.samples.shape and out.samples.dtype == np.float32
    dist = np.abs(out.samples - parents.samples).mean(axis=(1, 2, 3))
    assert np.array_equal(out.samples[degree == 0], parents.samples[degree == 0])  # degree 0: copies
    assert dist[degree == 0.1].max() < dist[degree == 0.5].min()
    assert dist[degree == 0.5].mean() < dist[degree == 1.0].mean()
    # a constant array is the scalar
    same = gen.variation(parents, np.full(30, 0.5), seed=9)
    assert np.array_equal(same.samples, gen.variation(parents, 0.5, seed=9).samples)


def test_per_row_degrees_stable_diffusion(models):
    gen = make(models, "sd", context=GRAY, num_inference_steps=10)
    parents = gen.random(np.array([0, 1, 2, 0]), seed=0)
    out = gen.variation(parents, np.array([0.0, 0.2, 1.0, 0.2]), seed=1)
    assert out.samples.shape == (4, 8, 8) and np.array_equal(out.samples[0], parents.samples[0])
    assert not np.allclose(out.samples[1:], parents.samples[1:])


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_degree_out_of_range_is_refused(models, bad):
    gen = make(models, "ddim")
    parents = gen.random(np.array([0, 1]), seed=0)
    with pytest.raises(ValueError, match="degree"):
        gen.variation(parents, bad, seed=0)


def test_variation_refuses_parents_of_another_shape(models):
    gen = make(models, "ddim")
    with pytest.raises(ValueError, match="shape"):
        gen.variation(SampleBatch(labels=[0], samples=np.zeros((1, 8, 8), np.float32)), 0.5, seed=0)


# -- (4) options ---------------------------------------------------------------------------


def test_options_refuse_a_missing_model_path(tmp_path):
    import pydantic

    missing = tmp_path / "no-such-model"
    with pytest.raises(pydantic.ValidationError, match=str(missing)):
        Options(pipeline="ddim", model_path=str(missing))


def test_options_refuse_an_unknown_field(models):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="extra"):
        Options(pipeline="ddim", model_path=str(models["ddim"]), steps=10)


def test_options_refuse_a_folder_of_the_wrong_kind(models):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="missing transformer"):
        Options(pipeline="dit", model_path=str(models["ddim"]))
    with pytest.raises(pydantic.ValidationError, match="class_map"):
        Options(pipeline="stable_diffusion", model_path=str(models["sd"]), class_map={0: 1})
    with pytest.raises(pydantic.ValidationError, match="guidance"):
        Options(pipeline="ddim", model_path=str(models["ddim"]), guidance_scale=3.0)
    with pytest.raises(pydantic.ValidationError, match="class_map"):
        Options(pipeline="dit", model_path=str(models["dit"]), class_map={0: -1})


def test_class_map_is_checked_against_the_model(models):
    with pytest.raises(ValueError, match="no entry for labels"):
        make(models, "dit", class_map={0: 1})
    with pytest.raises(ValueError, match="5 classes"):
        make(models, "dit", class_map={0: 1, 1: 2, 2: 5})
    with pytest.raises(ValueError, match="unconditional"):
        make(models, "ddim", class_map=CLASS_MAP)


def test_half_precision_falls_back_to_float32_on_cpu(models):
    with pytest.warns(UserWarning, match="float32"):
        gen = make(models, "ddim", dtype="float16")
    assert str(gen.dtype) == "torch.float32"
    assert gen.random(LABELS[:2], seed=0).samples.dtype == np.float32


def test_module_import_and_validation_do_not_load_torch(models):
    code = (
        "import sys\n"
        "from privevo.actors.generators.worker import validate_generator_options\n"
        f"o = validate_generator_options('diffusion', {{'pipeline': 'ddim', 'model_path': {str(models['ddim'])!r}}})\n"
        "assert o.num_inference_steps == 50\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- the worker and the shipped configs --------------------------------------------------


def test_worker_serves_the_diffusion_generator(models):
    from privevo.actors.generators.worker import GeneratorWorker

    options = {"pipeline": "ddim", "model_path": str(models["ddim_cond"]), "class_map": CLASS_MAP,
               "num_inference_steps": 4}
    worker = GeneratorWorker("diffusion", options, RGB)
    parents = worker.random(np.array([0, 1]), seed=0)
    ahead = worker.lookahead(parents, 0.5, 3, seed=1)
    assert ahead.shape == (2, 3, 12, 12, 3)
    assert not np.allclose(ahead[:, 0], ahead[:, 1])


@pytest.mark.parametrize("name", ["cifar10-diffusion.yaml", "sd-variation.yaml"])
def test_shipped_configs_validate(models, tmp_path, name):
    """The configs parse with their paths pointed at local stand-ins; their options load a tiny model."""
    from privevo.pipelines.config import parse_config

    raw = yaml.safe_load((ROOT / "configs" / name).read_text())
    assert raw["generator"]["kind"] == "diffusion"
    options = raw["generator"]["options"]
    assert Path(options["model_path"]).is_absolute()
    for key in ("path", "heldout_path"):
        (tmp_path / key).mkdir()
        raw["data"][key] = str(tmp_path / key)
    stand_in = {"dit": "dit", "stable_diffusion": "sd"}[options["pipeline"]]
    options["model_path"] = str(models[stand_in])
    embedder = raw.get("embedder", {}).get("options", {})
    if "model_path" in embedder:
        (tmp_path / "embedder.pth").write_bytes(b"")
        embedder["model_path"] = str(tmp_path / "embedder.pth")
    config = parse_config(raw, name)
    parsed = Options.model_validate(config.generator.options)
    if parsed.class_map is not None:  # real ImageNet ids: all ten CIFAR-10 classes, ids in 0..999
        assert sorted(parsed.class_map) == list(range(10))
        ids = [i for v in parsed.class_map.values() for i in (v if isinstance(v, list) else [v])]
        assert all(0 <= i < 1000 for i in ids) and len(set(ids)) == len(ids)
    if parsed.prompts is not None:
        assert sorted(parsed.prompts) == list(range(len(parsed.prompts)))
