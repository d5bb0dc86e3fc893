"""PE end to end with foundation-model generators on CPU: tiny random models, real code paths."""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import digits_image_folder, small_config
from privevo.pipelines.config import ConfigError
from privevo.pipelines.evolution import synthesize
from privevo.pipelines.privacy import PrivacyLedger

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")]

POSITIVE = ["the food was great and the staff were friendly", "lovely place with tasty dishes and kind people",
            "excellent dinner, we will come back soon", "wonderful pasta and a warm welcome"]
NEGATIVE = ["cold food and a rude waiter", "terrible service, we waited an hour",
            "the soup was bland and overpriced", "dirty tables and a long wait"]


def reviews_csv(path, copies=8):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "sentiment"])
        for i in range(copies):
            for text in POSITIVE:
                writer.writerow([f"{text} (visit {i})", "positive"])
            for text in NEGATIVE:
                writer.writerow([f"{text} (visit {i})", "negative"])
    return str(path)


def text_overrides(csv_path, model_path, generations=2):
    return {
        "generations": generations,
        "privacy.epsilon": 4.0,
        "privacy.delta": 1e-3,
        "data.kind": "text_table", "data.path": csv_path, "data.label_column": "sentiment",
        "data.class_names": "[negative, positive]", "data.heldout": "split", "data.heldout_fraction": 0.25,
        "population.per_class": 6, "population.final_per_class": 8, "population.shard_size": 4,
        "vote.k": 1, "vote.lookahead": 2,
        "generator.kind": "llm",
        "generator.options": json.dumps({
            "backend": "transformers", "model_path": model_path, "target_words": 12,
            "random_prompt": "Write a {class_name} restaurant review:", "variation": "mixed",
            "batch_size": 8,
        }),
        "embedder.kind": "sentence_transformer",
        "evaluation.classifier": "logreg", "evaluation.features": "embedding",
    }


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tiny_llm import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny-gpt2")


def test_text_pe_with_tiny_llm_and_minilm(tmp_path, tiny_lm, ray_session):
    csv_path = reviews_csv(tmp_path / "reviews.csv")
    config = small_config(**text_overrides(csv_path, tiny_lm))
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=3)
    report = result.report
    assert report["privacy"]["releases"] == 2 == len(PrivacyLedger(tmp_path / "run").records())
    assert report["privacy"]["assumed_public"]["class_names"] == {"0": "negative", "1": "positive"}
    table = pq.read_table(tmp_path / "run" / "synthetic.parquet")
    assert table.num_rows == 16 and "text" in table.column_names and "image" not in table.column_names
    texts = table.column("text").to_pylist()
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert sorted(table.column("label").to_pylist()) == [0] * 8 + [1] * 8
    for key in ("accuracy", "frechet_distance"):
        assert np.isfinite(report["evaluation"][key])
    assert (tmp_path / "run" / "samples.md").read_text().count("- ") >= 8


def test_text_config_refusals_before_any_data(tmp_path, tiny_lm):
    csv_path = reviews_csv(tmp_path / "reviews.csv")
    bad_model = text_overrides(csv_path, str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**bad_model), tmp_path / "run1")
    assert info.value.field.startswith("generator.options") and "no-such-model" in str(info.value)
    mismatched = {**text_overrides(csv_path, tiny_lm), "embedder.kind": "pixels"}
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**mismatched), tmp_path / "run2")
    assert info.value.field == "embedder.kind"
    simulator_on_text = {**text_overrides(csv_path, tiny_lm), "generator.kind": "simulator", "generator.options": "{}"}
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**simulator_on_text), tmp_path / "run3")
    assert info.value.field == "generator.kind"
    assert not any((tmp_path / f"run{i}").exists() for i in (1, 2, 3))



# --------------------------------------------------------------------------- images


def digits_folder(root, per_class=16):
    digits_image_folder(root, per_class=per_class)
    return str(root)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(str(path))
    return str(path)


def image_overrides(folder, unet, clip):
    return {
        "generations": 2,
        "privacy.delta": 1e-3,
        "data.kind": "image_folder", "data.path": folder, "data.image_size": "[8, 8]", "data.channels": 3,
        "data.class_names": "[digit0, digit1, digit2]", "data.heldout": "split", "data.heldout_fraction": 0.25,
        "population.per_class": 8, "population.final_per_class": 10, "population.shard_size": 4,
        "vote.k": 2, "vote.lookahead": 2,
        "generator.kind": "diffusion",
        "generator.options": json.dumps({"pipeline": "ddim", "model_path": unet, "class_map": {0: 0, 1: 1, 2: 2},
                                         "num_inference_steps": 4, "batch_size": 8}),
        "embedder.kind": "clip", "embedder.options": json.dumps({"model_path": clip, "batch_size": 16}),
        "evaluation.classifier": "logreg", "evaluation.features": "embedding",
    }


def test_image_pe_with_tiny_diffusion_and_clip(tmp_path, tiny_clip, ray_session):
    from tiny_diffusion import build_tiny_ddim

    folder = digits_folder(tmp_path / "digits")
    unet = str(build_tiny_ddim(tmp_path / "ddim", num_classes=3, image_size=16))
    config = small_config(**image_overrides(folder, unet, tiny_clip))
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=5)
    report = result.report
    assert report["privacy"]["releases"] == 2 == len(PrivacyLedger(tmp_path / "run").records())
    assert report["privacy"]["assumed_public"]["data_bounds"].endswith("images [8, 8, 3]")
    table = pq.read_table(tmp_path / "run" / "synthetic.parquet")
    assert table.num_rows == 30 and table.schema.metadata[b"image_shape"] == b"8,8,3"
    images = np.asarray(table.column("image").combine_chunks().flatten()).reshape(30, 8, 8, 3)
    assert images.min() >= 0 and images.max() <= 255
    assert (tmp_path / "run" / "samples.png").stat().st_size > 1000
    for key in ("accuracy", "frechet_distance"):
        assert np.isfinite(report["evaluation"][key])


def test_image_config_names_a_missing_model_before_reading_data(tmp_path, tiny_clip):
    folder = digits_folder(tmp_path / "digits")
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**image_overrides(folder, str(tmp_path / "nope"), tiny_clip)), tmp_path / "run")
    assert info.value.field.startswith("generator.options") and "nope" in str(info.value)
    with pytest.raises(ConfigError) as info:
        synthesize(small_config(**image_overrides(folder, str(tmp_path / "nope"), str(tmp_path / "noclip"))),
                   tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_diffusion_degree_moves_farther_in_embedding_space(tmp_path, tiny_clip):
    """SDEdit at a larger degree lands farther from the parent in CLIP space."""
    from tiny_diffusion import build_tiny_ddim

    from privevo.actors.embedders import make_embedder
    from privevo.actors.generators.base import GeneratorContext
    from privevo.actors.generators.worker import make_generator

    unet = str(build_tiny_ddim(tmp_path / "ddim", num_classes=3, image_size=16, output_scale=0.0))
    context = GeneratorContext(modality="image", sample_shape=(16, 16, 3), max_value=255.0, labels=(0, 1, 2),
                               class_names={0: "0", 1: "1", 2: "2"})
    generator = make_generator("diffusion", {"pipeline": "ddim", "model_path": unet, "class_map": {0: 0, 1: 1, 2: 2},
                                             "num_inference_steps": 10, "batch_size": 32}, context)
    parents = generator.random(np.repeat([0, 1, 2], 10), seed=1)
    embedder = make_embedder("clip", 255.0, {"model_path": tiny_clip})
    base = embedder.embed(parents.samples)
    distances = [
        float(np.linalg.norm(embedder.embed(generator.variation(parents, d, seed=2).samples) - base, axis=1).mean())
        for d in (0.1, 0.5, 1.0)
    ]
    assert distances[0] < distances[1] < distances[2], distances


@pytest.mark.parametrize("name", ["text-cpu.yaml", "text-vllm.yaml"])
def test_shipped_text_configs_pass_every_check(name, tmp_path, tiny_lm):
    """With data and model paths pointed at local stand-ins, the configs pass the driver's checks."""
    import yaml

    from pathlib import Path

    from privevo.pipelines.config import parse_config
    from privevo.pipelines.checks import check_config, check_data

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / name).read_text())
    for key in ("path", "heldout_path"):
        path = tmp_path / f"{key}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([raw["data"]["text_column"], raw["data"]["label_column"]])
            names = raw["data"]["class_names"]
            writer.writerows([(f"review {i}", names[i % len(names)]) for i in range(2000)])
        raw["data"][key] = str(path)
    raw["generator"]["options"]["model_path"] = tiny_lm
    config = parse_config(raw, name)
    plan, info, labels = check_config(config, name)
    check_data(config, name)
    assert info.modality == "text" and labels == tuple(range(len(raw["data"]["class_names"])))
    assert plan.releases == config.generations


def test_a_plan_larger_than_the_cluster_is_refused():
    from privevo.pipelines.checks import check_capacity

    config = small_config(generators=3, **{"resources.generator_cpus": 1.0})
    with pytest.raises(ConfigError, match=r"needs 3\.25 CPUs .* has 2"):
        check_capacity(config, {"CPU": 2.0}, voter_shards=1)
    check_capacity(config, {"CPU": 4.0}, voter_shards=1)
    gpu = small_config(**{"resources.generator_gpus": 1.0})
    with pytest.raises(ConfigError, match="GPU"):
        check_capacity(gpu, {"CPU": 8.0}, voter_shards=1)
