"""The audit with a CNN (``training.arch: cnn``): the fields checked against the data's public
description before any record is read, the spec a chunk trains, DP-SGD's per-example clipping
through conv layers, the membership mask, and a tiny audit on an image folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch.func import functional_call

from privevo.actors.training.device import task_device, training_device
from privevo.actors.training.dpsgd import clipped_grad_sum, train_batched_dpsgd
from privevo.actors.training.models import TrainSpec, build_template, init_params
from privevo.actors.training.train import train_batched
from privevo.pipelines.audit import data as audit_data
from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.job import load_audit_config
from privevo.pipelines.config import ConfigError

NAMES = ["top", "middle", "bottom"]


def band_images(n_per_class: int, side: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes of side x side grey images in 0..255: class c is a bright band over a third of
    the rows (top, middle, bottom) on noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    x = rng.integers(0, 60, (len(labels), side, side))
    third = side // 3
    for i, c in enumerate(labels):
        x[i, c * third:(c + 1) * third, :] += 180
    return np.minimum(x, 255).astype(np.uint8), labels


def write_folder(root: Path, n_per_class: int, seed: int, garbage: bool = False) -> Path:
    """An image folder of ``band_images`` as PNGs, one subfolder per class (``garbage``: files
    that are not images, so reading any record would fail)."""
    x, y = band_images(n_per_class, seed=seed)
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, c) in enumerate(zip(x, y)):
        path = root / NAMES[c] / f"{i:04d}.png"
        if garbage:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(img, mode="L").save(path)
    return root


def folder_data(tmp_path: Path, n_per_class: int = 30, garbage: bool = False) -> dict:
    return {"kind": "image_folder", "path": str(write_folder(tmp_path / "private", n_per_class, 0, garbage)),
            "class_names": NAMES, "image_size": [12, 12], "channels": 1, "heldout": "path",
            "heldout_path": str(write_folder(tmp_path / "heldout", 10, 1, garbage))}


def cnn_config(data: dict, **training) -> dict:
    return {
        "name": "cnn", "seed": 3, "runs": 4, "data": data, "canaries": {"count": 6},
        "training": {"arch": "cnn", "channels": [4, 8], "hidden": [16], "epochs": 10, "batch_size": 16, "lr": 0.05,
                     **training},
        "resources": {"chunk_runs": 4},
        "paradigms": [
            {"kind": "none"},
            {"kind": "dpsgd", "epsilon": 2.0, "epochs": 3, "batch_size": 32, "lr": 1.0, "momentum": 0.0},
        ],
    }


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(json.dumps(raw))
    return path


# ------------------------------------------------------------------------------------------------
# the fields


def test_arch_and_channels_are_checked_by_the_config():
    data = {"kind": "digits"}
    with pytest.raises(ValidationError, match="training.arch"):
        AuditConfig.model_validate({**cnn_config(data), "training": {"arch": "rnn"}})
    with pytest.raises(ValidationError, match="channels: arch 'cnn' needs one or more positive channel counts"):
        AuditConfig.model_validate({**cnn_config(data), "training": {"arch": "cnn", "channels": []}})
    with pytest.raises(ValidationError, match="channels: arch 'cnn' needs"):
        AuditConfig.model_validate({**cnn_config(data), "training": {"arch": "cnn", "channels": [8, 0]}})
    # the default stays the MLP; an MLP config dumped and read back (as chunk tasks do) is valid
    config = AuditConfig.model_validate({**cnn_config(data), "training": {}})
    assert config.training.arch == "mlp"
    assert AuditConfig.model_validate(config.model_dump(mode="json")).training == config.training


def test_a_cnn_that_cannot_take_the_data_is_refused_before_any_record_is_read(tmp_path, monkeypatch):
    def no_private(*args, **kwargs):
        raise AssertionError("private data read while checking a config")

    monkeypatch.setattr(audit_data, "load_private", no_private)
    monkeypatch.setattr(audit_data, "load_heldout", no_private)
    images = folder_data(tmp_path, 2, garbage=True)  # any record read would fail
    # 12x12: 12 -> 6 -> 3 -> 1 fits three blocks, not four
    load_audit_config(write_config(tmp_path, cnn_config(images, channels=[4, 4, 4])))
    with pytest.raises(ConfigError, match=r"training\.channels: 4 conv blocks.*12x12 images \(at most 3\)") as err:
        load_audit_config(write_config(tmp_path, cnn_config(images, channels=[4, 4, 4, 4])))
    assert str(tmp_path / "audit.yaml") in str(err.value)
    # samples that are flat vectors are not images
    flat = tmp_path / "flat.npz"
    rng = np.random.default_rng(0)
    np.savez(flat, samples=rng.random((12, 20)), labels=np.arange(12) % 3, heldout_samples=rng.random((6, 20)),
             heldout_labels=np.arange(6) % 3, max_value=np.float64(1.0))
    vectors = {"kind": "arrays", "path": str(flat), "class_names": NAMES, "heldout": "path", "heldout_path": str(flat)}
    with pytest.raises(ConfigError, match=r"training\.arch: 'cnn' needs image samples .*shape \[20\]"):
        load_audit_config(write_config(tmp_path, cnn_config(vectors)))
    with pytest.raises(ConfigError, match=r"training\.augment: shifts need image samples"):
        load_audit_config(write_config(tmp_path, cnn_config(vectors, arch="mlp", augment=True)))
    load_audit_config(write_config(tmp_path, cnn_config(vectors, arch="mlp")))  # the MLP takes any shape


def test_train_spec_carries_the_architecture_the_image_shape_and_the_device(tmp_path):
    from privevo.pipelines.audit.chunks import train_spec

    config = AuditConfig.model_validate(cnn_config(folder_data(tmp_path, 2)))
    plain, dp = (train_spec(config, p) for p in config.paradigms)
    assert (plain.arch, plain.channels, plain.hidden, plain.image_shape) == ("cnn", (4, 8), (16,), (1, 12, 12))
    assert (dp.arch, dp.epochs, dp.batch_size, dp.lr) == ("cnn", 3, 32, 1.0)
    assert plain.device == "cpu"  # no GPU asked for
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, samples=np.zeros((6, 8, 10, 3), np.uint8), labels=np.arange(6) % 3, max_value=np.float64(255))
    arrays = {"kind": "arrays", "path": str(rgb), "class_names": NAMES, "heldout": "split"}
    config = AuditConfig.model_validate(cnn_config(arrays))
    assert train_spec(config, config.paradigms[0]).image_shape == (3, 8, 10)  # channels last -> (C, H, W)


def test_the_device_is_the_cpu_unless_a_gpu_is_held():
    assert task_device(0.0) == "cpu"
    assert task_device(1.0) == "cpu"  # asked for, but this process is no Ray task holding a GPU
    assert training_device(TrainSpec()) == torch.device("cpu")
    with pytest.raises(ValueError, match="TrainSpec.device"):
        TrainSpec(device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="TrainSpec.device: 'cuda' asked for, but torch sees no CUDA device"):
            train_batched(np.zeros((4, 6, 6)), np.arange(4) % 2, np.ones((1, 4)), TrainSpec(device="cuda"), [0], 2)


# ------------------------------------------------------------------------------------------------
# DP-SGD through conv layers


@pytest.mark.parametrize("method", ["ghost", "vmap"])
def test_dpsgd_clipped_sum_of_a_cnn_matches_a_per_example_loop(method):
    """The sum of clipped per-example gradients of a CNN (two conv blocks, a hidden layer), each
    run with its own parameters, equals a loop of plain autograd, one example at a time; padding
    (sampled 0) contributes nothing. Small max_elements: the runs are taken a few at a time."""
    spec = TrainSpec(arch="cnn", channels=(3, 4), hidden=(8,))
    template = build_template(spec, (2, 9, 10), 5)
    r, b, clip = 3, 6, 0.5
    per_run = [init_params(template, s) for s in range(r)]
    params = {k: torch.stack([p[k] for p in per_run]) for k in per_run[0]}
    g = torch.Generator().manual_seed(0)
    xb = torch.rand(r, b, 2, 9, 10, generator=g)
    yb = torch.randint(0, 5, (r, b), generator=g)
    sampled = (torch.rand(r, b, generator=g) < 0.7).float()
    sums, norms = clipped_grad_sum(template, params, xb, yb, sampled, clip, method=method, max_elements=2000)
    clipped_any = False
    for run in range(r):
        expected = {k: torch.zeros_like(v[run]) for k, v in params.items()}
        for i in range(b):
            p = {k: v[run].clone().requires_grad_(True) for k, v in params.items()}
            loss = F.cross_entropy(functional_call(template, p, (xb[run, i:i + 1],)), yb[run, i:i + 1])
            grads = torch.autograd.grad(loss, list(p.values()))
            norm = torch.sqrt(sum((gr ** 2).sum() for gr in grads))
            assert norms[run, i].item() == pytest.approx(norm.item(), rel=1e-5)
            factor = min(1.0, clip / (norm.item() + 1e-6)) * sampled[run, i].item()
            clipped_any |= factor < 1.0 and sampled[run, i].item() == 1.0
            for k, gr in zip(p, grads):
                expected[k] += factor * gr
        for k in params:
            torch.testing.assert_close(sums[k][run], expected[k], rtol=1e-5, atol=1e-6)
    assert clipped_any  # the clip bound was active for some examples: clipping itself was tested


# ------------------------------------------------------------------------------------------------
# the membership mask


def _same_run(a, b, k: int) -> bool:
    return all(torch.equal(a.params[n][k], b.params[n][k]) for n in a.params)


@pytest.mark.parametrize("trainer", ["plain", "dpsgd"])
def test_a_sample_a_run_excludes_cannot_change_its_cnn(trainer):
    """Run 0 excludes 10 samples, run 1 holds them: flipping their pixels leaves run 0's CNN
    bitwise unchanged and changes run 1's."""
    x, y = band_images(20)
    x = x.astype(np.float32) / 255
    outside = np.random.default_rng(1).choice(len(x), 10, replace=False)
    w = np.ones((2, len(x)), dtype=np.float32)
    w[0, outside] = 0
    spec = TrainSpec(arch="cnn", channels=(4, 8), hidden=(16,), epochs=2, batch_size=16, lr=0.1, augment=True)

    def train(xx):
        if trainer == "plain":
            return train_batched(xx, y, w, spec, [7, 8], 3)
        return train_batched_dpsgd(xx, y, w, spec, [7, 8], 3, noise_multiplier=1.0, max_grad_norm=1.0)

    x2 = x.copy()
    x2[outside] = 1.0 - x2[outside]
    a, b = train(x), train(x2)
    assert _same_run(a, b, 0), "an excluded sample changed run 0's model"
    assert not _same_run(a, b, 1), "run 1's own samples had no effect"


# ------------------------------------------------------------------------------------------------
# a tiny audit


def test_tiny_cnn_audit_on_an_image_folder_in_process(tmp_path):
    """none and dpsgd with a CNN on 3 classes of 12x12 grey PNGs, chunk by chunk in this process."""
    from privevo.pipelines.audit.chunks import train_chunk
    from privevo.pipelines.audit.paradigms import audit_paradigm, check_paradigms
    from privevo.pipelines.audit.reduce import reduce_audit
    from privevo.pipelines.audit.schedule import prepare_directory

    config = load_audit_config(write_config(tmp_path, cnn_config(folder_data(tmp_path))))
    out = tmp_path / "audit"
    options = check_paradigms(config, "test")
    data = prepare_directory(config, out)
    assert data.x.shape[1:] == (12, 12)
    entries = {p.key: audit_paradigm(p.kind, index=i) for i, p in enumerate(config.paradigms)}
    for i, p in enumerate(config.paradigms):
        train_chunk(config.model_dump(mode="json"), i, [0, 1, 2, 3], str(out), entries[p.key], options.get(p.key))
    for name in ("none", "dpsgd"):
        with np.load(out / "runs" / name / "chunk-0000-0003.npz") as z:
            assert z["scores"].shape == (4, 6) and np.isfinite(z["scores"]).all()
    report = reduce_audit(config, out, data, entries)
    none, dp = report["paradigms"]["none"], report["paradigms"]["dpsgd"]
    assert none["accuracy"] > 0.9  # the CNN learnt the bands (measured 1.0)
    assert dp["accuracy"] > 0.5  # DP-SGD at epsilon 2 on 90 records: above chance, 1/3 (measured 0.62)
    assert abs(dp["epsilon"] - 2.0) < 0.05 and dp["violation"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("trainer", ["plain", "dpsgd"])
def test_a_cnn_trained_on_the_gpu_is_the_cpu_one_up_to_rounding(trainer):
    """The same runs on "cuda" and on the CPU: the random draws are the CPU generators' on both,
    so only rounding differs; the trained parameters come back to the CPU."""
    x, y = band_images(20)
    x = x.astype(np.float32) / 255
    w = np.ones((2, len(x)), dtype=np.float32)
    w[0, :5] = 0
    models = []
    for device in ("cpu", "cuda"):
        spec = TrainSpec(arch="cnn", channels=(4, 8), hidden=(16,), epochs=1, batch_size=16, lr=0.05, augment=True,
                         device=device)
        if trainer == "plain":
            models.append(train_batched(x, y, w, spec, [7, 8], 3))
        else:
            models.append(train_batched_dpsgd(x, y, w, spec, [7, 8], 3, noise_multiplier=1.0, max_grad_norm=1.0))
    cpu, gpu = models
    for k in cpu.params:
        assert gpu.params[k].device.type == "cpu"
        torch.testing.assert_close(gpu.params[k], cpu.params[k], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu.logits(x[:8]), cpu.logits(x[:8]), rtol=1e-3, atol=1e-3)


def test_the_digits28_audit_config_loads_with_its_data_set_on_the_command_line(tmp_path):
    """configs/audit-digits28.yaml: a CNN on 28x28 grey image folders, and PE runs with
    configs/digits28.yaml, whose own data section is a placeholder (the audit sets each run's
    data: the file is validated with the audit's data in its place)."""
    root = Path(__file__).resolve().parents[1]
    digits = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    for split in ("private", "heldout"):
        for name in digits:
            (tmp_path / split / name).mkdir(parents=True)
    config = load_audit_config(root / "configs" / "audit-digits28.yaml",
                               [f"data.path={tmp_path / 'private'}", f"data.heldout_path={tmp_path / 'heldout'}"])
    assert config.training.arch == "cnn" and config.data["image_size"] == [28, 28]
    from privevo.pipelines.audit.pe_runs import pe_config_template

    pe = next(i for i, p in enumerate(config.paradigms) if p.kind == "pe")
    template = pe_config_template(config, pe, base_dir=root)
    assert template.generations == 3 and template.data.path == str(tmp_path / "private")


@pytest.mark.parametrize("name,options", [
    ("coreset", {"features": "model", "feature_epochs": 2, "fraction": 0.5}),
    ("coreset", {"method": "forgetting", "forgetting_epochs": 2, "fraction": 0.5}),
    ("distill", {"ipc": 3, "iterations": 5}),
    ("dfkd", {"per_class": 5, "steps": 5, "teacher_epochs": 3}),
    ("diffusion", {"per_class": 5, "steps": 5, "sample_steps": 3, "timesteps": 10, "hidden": 16, "depth": 1}),
])
def test_every_plugin_paradigm_takes_a_cnn(name, options):
    """The plugin paradigms with a CNN spec: their final classifiers (and coreset's feature and
    scoring models, dfkd's teacher) are CNNs, and the run's model has conv parameters."""
    from privevo.actors.paradigms import PARADIGMS

    x, y = band_images(10)
    x = x.astype(np.float32) / 255
    spec = TrainSpec(arch="cnn", channels=(4,), hidden=(8,), epochs=3, batch_size=16, lr=0.05,
                     image_shape=(1, 12, 12))
    w = np.ones((2, len(x)), dtype=np.float32)
    model = PARADIGMS[name].train(x, y, w, x, y, spec, [1, 2], options, 3)
    assert model.params["convs.0.weight"].shape == (2, 4, 1, 3, 3)
    assert model.logits(x[:4]).shape == (2, 4, 3)


def test_an_audit_stored_before_training_arch_existed_resumes(tmp_path):
    """A stored config without ``training.arch`` or ``per_generation`` (an MLP audit written
    before the fields) is the same audit as today's MLP config; a CNN config is not."""
    import yaml

    from privevo.pipelines.audit.schedule import check_resume

    config = AuditConfig.model_validate({**cnn_config({"kind": "digits"}), "training": {"hidden": [16]}})
    out = tmp_path / "audit"
    out.mkdir()
    stored = config.model_dump(mode="json")
    stored["training"] = {k: v for k, v in stored["training"].items() if k not in ("arch", "channels")}
    stored["paradigms"] = [{k: v for k, v in p.items() if k != "per_generation"} for p in stored["paradigms"]]
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    check_resume(config, out, "test")
    cnn = AuditConfig.model_validate({**cnn_config({"kind": "digits"}), "training": {"hidden": [16], "arch": "cnn"}})
    with pytest.raises(ConfigError, match=r"training\.arch: differs from the audit stored"):
        check_resume(cnn, out, "test")
