"""The GPU code paths: run only where CUDA is available (the device machine), skipped elsewhere.

They check that what runs on a GPU gives what the CPU path gives: the kNN vote search,
the voter's histograms, the Inception embedder, and that the diffusion generator is
reproducible from its seed on the GPU too.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_knn import brute_force

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("chunks", [(8192, 65536), (33, 70)])
def test_gpu_knn_matches_brute_force(backend, chunks):
    from privevo.actors.knn import exact_knn

    rng = np.random.default_rng(0)
    queries = rng.normal(size=(300, 32)).astype(np.float32)
    database = rng.normal(size=(500, 32)).astype(np.float32)
    for k in (1, 5):
        got = exact_knn(queries, database, k, backend=backend, query_chunk=chunks[0], db_chunk=chunks[1], device="cuda")
        np.testing.assert_array_equal(got, brute_force(queries, database, k))


def test_gpu_voter_histograms_equal_the_cpu_voter():
    from privevo.actors.voter import VoterShard

    rng = np.random.default_rng(1)
    synthetic = rng.uniform(0, 16, size=(60, 8, 8)).astype(np.float32)
    args = ({"kind": "digits"}, [3], "pixels", 16.0, (8, 8), 4)
    cpu = VoterShard(*args, knn_backend="numpy").vote([3], synthetic)[3]
    gpu = VoterShard(*args, knn_backend="torch", device="cuda").vote([3], synthetic)[3]
    np.testing.assert_allclose(gpu, cpu, atol=1e-12)


def test_gpu_inception_features_match_cpu(tmp_path):
    from privevo.actors.embedders import make_embedder
    from privevo.actors.embedders.inception import build_fid_inception

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(build_fid_inception().state_dict(), weights)
    images = np.random.default_rng(2).uniform(0, 255, size=(6, 32, 32, 3)).astype(np.float32)
    cpu = make_embedder("inception", 255.0, {"model_path": str(weights)}, "cpu").embed(images)
    gpu = make_embedder("inception", 255.0, {"model_path": str(weights)}, "cuda").embed(images)
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3, atol=2e-3 * float(np.abs(cpu).max()))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_diffusion_is_reproducible_and_in_range(tmp_path, dtype):
    from tiny_diffusion import build_tiny_ddim

    from privevo.actors.generators.base import GeneratorContext, SampleBatch
    from privevo.actors.generators.diffusion import DiffusionGenerator

    path = build_tiny_ddim(tmp_path / "ddim", num_classes=3)
    context = GeneratorContext(modality="image", sample_shape=(16, 16, 3), max_value=255.0, labels=(0, 1, 2),
                               class_names={0: "a", 1: "b", 2: "c"}, device="cuda")
    gen = DiffusionGenerator({"pipeline": "ddim", "model_path": str(path), "num_inference_steps": 6,
                              "batch_size": 4, "dtype": dtype, "class_map": {0: 0, 1: 1, 2: 2}}, context)
    labels = np.array([0, 1, 2, 2, 1, 0, 0])
    a, b, c = gen.random(labels, 11), gen.random(labels, 11), gen.random(labels, 12)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    assert a.samples.shape == (7, 16, 16, 3) and a.samples.min() >= 0 and a.samples.max() <= 255
    parents = SampleBatch(labels=a.labels, samples=a.samples, params=a.params)
    np.testing.assert_array_equal(gen.variation(parents, 0.0, 5).samples, a.samples)
    v1, v2 = gen.variation(parents, 0.5, 5), gen.variation(parents, 0.5, 5)
    np.testing.assert_array_equal(v1.samples, v2.samples)


def test_gpu_actor_meter_measures_busy_gpu_seconds(tmp_path):
    """A generator actor on a GPU integrates NVML utilisation over its calls (the run's GPU metering)."""
    pytest.importorskip("pynvml")
    from privevo.actors.generators.base import GeneratorContext
    from privevo.actors.generators.worker import GeneratorWorker
    from tiny_diffusion import build_tiny_ddim

    path = build_tiny_ddim(tmp_path / "ddim", num_classes=3, image_size=32)
    context = GeneratorContext(modality="image", sample_shape=(32, 32, 3), max_value=255.0, labels=(0, 1, 2),
                               class_names={0: "a", 1: "b", 2: "c"}, device="cuda")
    worker = GeneratorWorker("diffusion", {"pipeline": "ddim", "model_path": str(path), "num_inference_steps": 50,
                                           "batch_size": 256, "class_map": {0: 0, 1: 1, 2: 2}}, context)
    worker.stats()  # drop the set-up section
    worker.random(np.arange(2048) % 3, 1)
    stats = worker.stats()
    generate = stats["sections"]["generate"]
    assert stats["gpu"] and stats["gpu_busy_measured"]
    assert generate["samples"] == 2048
    assert 0 < generate["gpu_busy_seconds"] <= generate["wall_seconds"] * 1.01
