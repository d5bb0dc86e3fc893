"""The audit on data other than digits: classes, value range and shape come from the data's public
description; the PE paradigm's synthesize config is data (``synthesize_overrides``), refused
naming the audit's field before any private data is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privevo.pipelines.audit import data as audit_data
from privevo.pipelines.audit.config import AuditConfig
from privevo.pipelines.audit.job import load_audit_config
from privevo.pipelines.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["circle", "square", "stripe"]


def write_arrays(path: Path, n_per_class: int, held_per_class: int, channels: int | None = None, seed: int = 0) -> dict:
    """3 classes of 6x6 images with values 0..255 (class c: a bright band at rows 2c, 2c+1 over
    noise), the held-out set in the same file; ``channels``: (6, 6, channels) channels last."""
    rng = np.random.default_rng(seed)

    def images(n_each: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(3), n_each)
        x = rng.integers(0, 56, (len(labels), 6, 6)).astype(np.float64)
        for i, c in enumerate(labels):
            x[i, 2 * c:2 * c + 2, :] += 200
        if channels is not None:
            x = np.repeat(x[..., None], channels, axis=-1) + rng.integers(0, 2, (*x.shape, channels))
        return np.minimum(x, 255).astype(np.uint8), labels

    samples, labels = images(n_per_class)
    held, held_labels = images(held_per_class)
    np.savez(path, samples=samples, labels=labels, heldout_samples=held, heldout_labels=held_labels,
             max_value=np.float64(255.0))
    return {"kind": "arrays", "path": str(path), "class_names": NAMES, "heldout": "path", "heldout_path": str(path)}


def arrays_config(data: dict, **changes) -> AuditConfig:
    raw = {
        "name": "shapes", "seed": 4, "runs": 4, "data": data,
        "canaries": {"count": 6},
        "training": {"hidden": [16], "epochs": 8, "batch_size": 16},
        "resources": {"chunk_runs": 4},
        "paradigms": [
            {"kind": "none"},
            {"kind": "dpsgd", "epsilon": 2.0, "epochs": 2, "batch_size": 32, "lr": 0.5, "momentum": 0.0},
        ],
    }
    raw.update(changes)
    return AuditConfig.model_validate(raw)


def test_arrays_data_described_by_the_data(tmp_path):
    data = write_arrays(tmp_path / "shapes.npz", 20, 10)
    got = audit_data.prepare_data(arrays_config(data))
    assert got.n_classes == 3 and got.class_names == tuple(NAMES) and got.max_value == 255.0
    assert got.shape == got.sample_shape == (6, 6) and got.x.shape == (60, 6, 6) and got.x_test.shape == (30, 6, 6)
    with np.load(data["path"]) as z:
        raw, held = z["samples"].astype(np.float32), z["heldout_samples"].astype(np.float32)
    keep = got.canary_of < 0
    np.testing.assert_array_equal(got.x[keep], raw[keep] / np.float32(255))  # the file's values over max_value
    np.testing.assert_array_equal(got.x_test, held / np.float32(255))
    assert ((got.canary_y >= 0) & (got.canary_y < 3)).all() and (got.canary_y != got.true_y).all()
    np.testing.assert_allclose(got.samples(got.x[keep]), raw[keep], rtol=1e-6)  # back in the data's range


def test_channels_last_images_train_channels_first(tmp_path):
    data = write_arrays(tmp_path / "rgb.npz", 6, 3, channels=3)
    got = audit_data.prepare_data(arrays_config(data, canaries={"count": 4, "kind": "ood"}))
    assert got.sample_shape == (6, 6, 3) and got.shape == (3, 6, 6)
    with np.load(data["path"]) as z:
        held = z["heldout_samples"].astype(np.float32)
    # features[i, c, h, w] is sample[i, h, w, c] / max_value; and back again
    np.testing.assert_array_equal(got.x_test, held.transpose(0, 3, 1, 2) / np.float32(255))
    np.testing.assert_allclose(got.samples(got.x_test), held, rtol=1e-6)
    inverted = 1.0 - got.x[got.canary_rows]  # ood canaries: the inverted private image, same layout
    assert inverted.shape == (4, 3, 6, 6) and ((got.canary_y >= 0) & (got.canary_y < 3)).all()


def test_digits_features_are_the_samples_over_16():
    """The generic path gives digits exactly what the digits-only code gave: samples / 16 as
    (n, 8, 8) float32 (so every digits audit number stays bit for bit)."""
    from privevo.pipelines.data import load_heldout, load_private

    got = audit_data.prepare_data(AuditConfig.model_validate({"runs": 4, "canaries": {"count": 10},
                                                              "paradigms": [{"kind": "none"}]}))
    private, held = load_private({"kind": "digits"}), load_heldout({"kind": "digits"})
    keep = got.canary_of < 0
    expected = (private.samples.astype(np.float32) / 16.0).reshape(-1, 8, 8)
    assert got.x.dtype == np.float32 and got.x.shape == (1200, 8, 8)
    np.testing.assert_array_equal(got.x[keep], expected[keep])
    np.testing.assert_array_equal(got.x_test, (held.samples.astype(np.float32) / 16.0).reshape(-1, 8, 8))
    assert got.n_classes == 10 and got.class_names == tuple(str(d) for d in range(10)) and got.max_value == 16.0
    np.testing.assert_array_equal(got.samples(got.x[keep]), private.samples[keep])


def test_tiny_audit_on_arrays_data_in_process(tmp_path):
    """none and dpsgd on 3 classes of 6x6 images in 0..255, chunk by chunk in this process."""
    from privevo.actors.training.accounting import dpsgd_epsilon, dpsgd_noise_multiplier
    from privevo.actors.training.dpsgd import dpsgd_steps
    from privevo.pipelines.audit.chunks import train_chunk
    from privevo.pipelines.audit.paradigms import audit_paradigm, check_paradigms
    from privevo.pipelines.audit.reduce import reduce_audit
    from privevo.pipelines.audit.schedule import prepare_directory

    config = arrays_config(write_arrays(tmp_path / "shapes.npz", 40, 20))
    out = tmp_path / "audit"
    options = check_paradigms(config, "test")
    data = prepare_directory(config, out)
    entries = {p.key: audit_paradigm(p.kind, index=i) for i, p in enumerate(config.paradigms)}
    for i, p in enumerate(config.paradigms):
        train_chunk(config.model_dump(mode="json"), i, [0, 1, 2, 3], str(out), entries[p.key], options.get(p.key))
    with np.load(out / "runs" / "dpsgd" / "chunk-0000-0003.npz") as z:
        scores, accounted = z["scores"], float(z["epsilon"])
    assert scores.shape == (4, 6) and np.isfinite(scores).all()
    # the accounted epsilon is the accountant's, for the 120-record private set the file holds
    q = 32 / (120 - 6 * 0.5)
    steps = dpsgd_steps(2, q)
    assert accounted == pytest.approx(dpsgd_epsilon(dpsgd_noise_multiplier(2.0, 1e-5, q, steps), q, steps, 1e-5))
    assert abs(accounted - 2.0) < 0.05
    report = reduce_audit(config, out, data, entries)
    none, dp = report["paradigms"]["none"], report["paradigms"]["dpsgd"]
    assert none["accuracy"] > 0.9  # the bands are easy: the runs learnt the three declared classes
    assert dp["epsilon"] == pytest.approx(accounted) and dp["violation"] is False
    assert all(0 <= v["canary"] < 6 for v in none["most_vulnerable"])
    assert (out / "private" / "vulnerable.png").stat().st_size > 1000
    assert json.loads(json.dumps(report))["runs"] == 4


def write_audit(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    return path


def test_refusals_name_the_field_before_private_data_is_read(tmp_path, monkeypatch):
    data = write_arrays(tmp_path / "shapes.npz", 4, 2)

    def no_private(*args, **kwargs):
        raise AssertionError("private data read while checking a config")

    monkeypatch.setattr(audit_data, "load_private", no_private)
    monkeypatch.setattr(audit_data, "load_heldout", no_private)
    arrays = json.dumps(data)
    base = f"runs: 4\ndata: {arrays}\nparadigms:\n"
    cases = [
        ("  - {kind: pe, epsilon: 1, set: [vote.k=1]}", r"paradigms\.0\.set: replaced by synthesize_overrides"),
        ("  - {kind: pe, epsilon: 1, synthesize_overrides: {vote: {kk: 1}}}",
         r"paradigms\.0\.synthesize_overrides\.vote\.kk: unknown field"),
        ("  - {kind: pe, epsilon: 1, synthesize_overrides: {vote: {k: 0}}}",
         r"paradigms\.0\.synthesize_overrides\.vote\.k: "),
        ("  - {kind: pe, epsilon: 1, synthesize_overrides: {privacy: {epsilon: 8}}}",
         r"paradigms\.0\.synthesize_overrides\.privacy\.epsilon: set by the audit"),
        ("  - {kind: none, synthesize_overrides: {generations: 2}}", r"paradigms\.0\.synthesize_overrides: only kind 'pe'"),
        ("  - {kind: distill, options: {init: public}}", r"paradigms\.0\.options\.init: 'public' starts from a public set"),
    ]
    for paradigm, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load_audit_config(write_audit(tmp_path, base + paradigm))
    ok = {**data}
    for change, pattern in [({"heldout": "none", "heldout_path": None}, r"data\.heldout: the audit needs held-out data"),
                            ({"labels": [0, 1]}, r"data\.labels: the audit trains on every declared class"),
                            ({"class_names": None}, r"data\.class_names: required"),
                            ({"kind": "text_table"}, r"data\.kind: the audit trains image classifiers")]:
        bad = {k: v for k, v in {**ok, **change}.items() if v is not None}
        text = f"runs: 4\ndata: {json.dumps(bad)}\nparadigms:\n  - {{kind: none}}\n"
        with pytest.raises(ConfigError, match=pattern):
            load_audit_config(write_audit(tmp_path, text))
    # a good config is checked whole (data description, PE's synthesize config) without a private read
    load_audit_config(write_audit(tmp_path, base + "  - {kind: pe, epsilon: 1, synthesize_overrides: {vote: {k: 1}}}"))


def test_pe_runs_config_is_the_synthesize_file_with_the_overrides_merged(tmp_path):
    """The nested run's config object: the file, the overrides merged key by key (a sibling the
    override does not name keeps the file's value), the audit's settings, the run's seed and data;
    the same config the old ``--set`` strings gave."""
    from privevo.pipelines.audit.pe_runs import pe_config_template, pe_run_config

    data = write_arrays(tmp_path / "shapes.npz", 4, 2)
    config = arrays_config(data, delta=1e-6, paradigms=[{
        "kind": "pe", "epsilon": 3.0, "synthesize": str(ROOT / "configs" / "digits.yaml"),
        "synthesize_overrides": {"generations": 2, "population": {"per_class": 20}, "vote": {"k": 1}},
    }])
    template = pe_config_template(config, 0)
    run = pe_run_config(template, 1234, Path(data["path"]), audit_data.prepare_data(config))
    digits = load_config(ROOT / "configs" / "digits.yaml")
    assert run.population.per_class == 20 and run.population.final_per_class == digits.population.final_per_class
    assert run.generations == 2 and run.vote.k == 1 and run.vote.threshold == digits.vote.threshold
    assert run.seed == 1234 and run.privacy.epsilon == 3.0 and run.privacy.delta == 1e-6
    assert run.data.kind == "arrays" and run.data.class_names == NAMES and run.data.heldout_path == data["path"]
    old = load_config(ROOT / "configs" / "digits.yaml", [
        "resources.placement_timeout_s=86400", "generations=2", "population.per_class=20", "vote.k=1",
        "privacy.epsilon=3.0", "privacy.delta=1e-06", "seed=1234", "data.kind=arrays", f"data.path={data['path']}",
        f"data.class_names={NAMES}", "data.heldout=path", f"data.heldout_path={data['path']}",
        "evaluation.every_generation=false"])
    assert run == old


def test_image_folder_data_with_a_held_out_split(tmp_path):
    """image_folder: one subfolder per declared class, RGB PNGs, held-out records by hash split."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "shapes"
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 56, (6, 6, 3)).astype(np.uint8)
            img[2 * c:2 * c + 2] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")
    data = {"kind": "image_folder", "path": str(root), "class_names": NAMES, "image_size": [6, 6], "channels": 3,
            "heldout": "split", "heldout_fraction": 0.25}
    got = audit_data.prepare_data(arrays_config(data, canaries={"count": 3}))
    assert got.class_names == tuple(NAMES) and got.max_value == 255.0 and got.sample_shape == (6, 6, 3)
    assert got.x.shape[1:] == got.x_test.shape[1:] == (3, 6, 6) and len(got.x) + len(got.x_test) == 36
    assert 0 <= got.x.min() and got.x.max() <= 1 and ((got.canary_y >= 0) & (got.canary_y < 3)).all()
    # class c is bright on rows 2c, 2c+1 in every channel, as the files say
    for x, y in ((got.x[got.canary_of < 0], got.y[got.canary_of < 0]), (got.x_test, got.y_test)):
        bright = x.mean(axis=(1, 3)).argmax(axis=1)  # (n, H): the brightest row of each image
        assert (bright // 2 == y).all()


def test_an_audit_stored_with_set_strings_resumes_under_synthesize_overrides(tmp_path):
    import yaml

    from privevo.pipelines.audit.schedule import check_resume

    def audit(runs: int = 4, **pe) -> AuditConfig:
        return AuditConfig.model_validate({"runs": runs, "paradigms": [{"kind": "pe", "epsilon": 1.0, **pe}]})

    out = tmp_path / "audit"
    out.mkdir()
    stored = audit().model_dump(mode="json")
    del stored["paradigms"][0]["synthesize_overrides"]
    stored["paradigms"][0]["set"] = ["generations=2", "vote.k=1"]  # as an audit before the rename wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    check_resume(audit(8, synthesize_overrides={"generations": 2, "vote": {"k": 1}}), out, "a.yaml")  # extended
    with pytest.raises(ConfigError, match=r"paradigms\.0\.synthesize_overrides\.vote\.k: differs"):
        check_resume(audit(synthesize_overrides={"generations": 2, "vote": {"k": 2}}), out, "a.yaml")
