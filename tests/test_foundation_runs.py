"""PE end to end with foundation-model generators on CPU: tiny random models, real code paths."""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import small_config
from pipelines.config import ConfigError
from pipelines.evolution import synthesize
from pipelines.privacy import PrivacyLedger

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pipelines.privacy.InsecureNoiseWarning")]

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
        "data.heldout_fraction": 0.25,
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
    assert 0.5 <= report["evaluation"]["baselines"]["real"]["accuracy"] <= 1.0
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

