"""generator.kind public_data: a public image set as PE's prior (DPSDA's "nearest image")."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import digits_image_folder, small_config
from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.generators.public_data import PublicDataGenerator, PublicDataOptions
from privevo.actors.generators.worker import make_generator
from privevo.pipelines.config import ConfigError
from privevo.pipelines.evolution import synthesize

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")

DIGITS = tuple(str(d) for d in range(10))


def digits_context(labels=tuple(range(10)), shape=(8, 8), max_value=16.0, names=DIGITS):
    return GeneratorContext(modality="image", sample_shape=shape, max_value=max_value, labels=labels,
                            class_names={i: n for i, n in enumerate(names)})


@pytest.fixture(scope="module")
def public_npz(tmp_path_factory):
    """300 real digits (the last rows of load_digits, never the private ones below) as a public .npz."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("public") / "public.npz"
    np.savez(path, samples=digits.images[-300:].astype(np.float32), labels=digits.target[-300:],
             max_value=np.float32(16.0))
    return path, digits.images[-300:].astype(np.float32), digits.target[-300:]


def test_random_draws_public_images_of_the_matching_class(public_npz):
    path, images, labels = public_npz
    gen = make_generator("public_data", {"path": str(path)}, digits_context())
    asked = np.repeat(np.arange(10), 20)
    batch = gen.random(asked, seed=3)
    index = batch.params["public_index"]
    assert np.array_equal(batch.samples, images[index])  # same shape and range: the very pixels
    assert np.array_equal(labels[index], asked)  # class restriction
    assert len(set(index.tolist())) == len(index)  # no repeats while a class has enough images
    again = gen.random(asked, seed=3)
    assert np.array_equal(again.params["public_index"], index)
    assert not np.array_equal(gen.random(asked, seed=4).params["public_index"], index)


def test_variation_degree_picks_among_the_nearest_with_the_parent_first(public_npz):
    path, images, labels = public_npz
    gen = make_generator("public_data", {"path": str(path), "max_neighbours": 8}, digits_context())
    parents = gen.random(np.repeat(np.arange(10), 5), seed=1)
    # degree 0: m = 1, the parent itself (a copy)
    copy = gen.variation(parents, 0.0, seed=2)
    assert np.array_equal(copy.params["public_index"], parents.params["public_index"])
    assert np.array_equal(copy.samples, parents.samples)
    # degree 0.25: one of the 2 nearest public images of the same class (brute force, here)
    flat = images.reshape(len(images), -1) / 16.0
    near = gen.variation(parents, 0.25, seed=2).params["public_index"]
    moved = 0
    for p, got in zip(parents.params["public_index"], near):
        same = np.flatnonzero(labels == labels[p])
        order = same[np.argsort(((flat[same] - flat[p]) ** 2).sum(1), kind="stable")]
        assert got in order[:2] and labels[got] == labels[p]
        moved += got != p
    assert moved > 0  # it does move
    # degree 1: within the 8 nearest, and farther on average than at degree 0.25
    far = gen.variation(parents, 1.0, seed=2).params["public_index"]
    dist = lambda idx: ((flat[idx] - flat[parents.params["public_index"]]) ** 2).sum(1).mean()
    assert dist(far) > dist(near)


def test_any_class_pools_the_whole_public_set_and_refuses_missing_names(public_npz, tmp_path):
    path, images, labels = public_npz
    gen = make_generator("public_data", {"path": str(path), "classes": "any"}, digits_context())
    batch = gen.random(np.zeros(200, dtype=np.int64), seed=0)
    assert len(np.unique(labels[batch.params["public_index"]])) > 5  # label 0 draws every kind of digit
    # auto: the private names are not the public ones -> any; match -> refused, naming the option
    other = digits_context(names=tuple(f"digit{d}" for d in range(10)))
    assert make_generator("public_data", {"path": str(path)}, other).classes == "any"
    with pytest.raises(ValueError, match=r"generator\.options\.classes.*'digit0'"):
        make_generator("public_data", {"path": str(path), "classes": "match"}, other)
    # an unlabelled public set (no 'labels' array)
    bare = tmp_path / "bare.npz"
    np.savez(bare, samples=images[:50], max_value=np.float32(16.0))
    assert make_generator("public_data", {"path": str(bare)}, digits_context()).classes == "any"


def test_public_images_are_converted_to_the_private_shape_channels_and_range(public_npz):
    """8x8 grey 0..16 public digits for a 12x20 RGB 0..255 private set: each sample is its public image
    scaled to 0..1, resized bicubic in float (width 20, height 12), clipped, scaled to 0..255, grey in
    three channels; and close to what PIL's 8-bit resize gives (that one rounds and clips between its
    two passes, so single pixels differ by several levels at sharp edges)."""
    path, images, _ = public_npz
    gen = make_generator("public_data", {"path": str(path)}, digits_context(shape=(12, 20, 3), max_value=255.0))
    batch = gen.random(np.arange(10), seed=0)
    assert batch.samples.shape == (10, 12, 20, 3) and batch.samples.dtype == np.float32
    for sample, i in zip(batch.samples, batch.params["public_index"]):
        grey = Image.fromarray((images[i] / 16).astype(np.float32), mode="F").resize((20, 12), Image.Resampling.BICUBIC)
        expected = np.clip(np.asarray(grey), 0, 1) * 255
        for c in range(3):
            assert np.allclose(sample[..., c], expected, atol=1e-3)
        eight_bit = Image.fromarray(np.round(images[i] / 16 * 255).astype(np.uint8))
        pil = np.asarray(eight_bit.resize((20, 12), Image.Resampling.BICUBIC), dtype=np.float32)
        assert np.abs(sample[..., 0] - pil).mean() <= 1.5


def test_augmentation_is_carried_in_the_params_and_degree_0_still_copies(public_npz):
    path, images, _ = public_npz
    options = {"path": str(path), "augment": {"max_shift": 2}}
    gen = make_generator("public_data", options, digits_context())
    parents = gen.random(np.repeat(np.arange(10), 10), seed=5)
    shifts = np.stack([parents.params["shift_y"], parents.params["shift_x"]], 1)
    assert np.abs(shifts).max() == 2 and (shifts != 0).any()
    row = int(np.flatnonzero(parents.params["shift_y"] == 1)[0])
    expected = np.pad(images[parents.params["public_index"][row]], 1, mode="edge")
    dx = int(parents.params["shift_x"][row])
    assert np.array_equal(parents.samples[row], expected[0:8, 1 - dx:9 - dx])
    copy = gen.variation(parents, 0.0, seed=6)
    assert np.array_equal(copy.samples, parents.samples)
    assert not np.array_equal(gen.variation(parents, 1.0, seed=6).params["shift_y"], parents.params["shift_y"])


def test_an_image_folder_is_a_public_set_too(tmp_path):
    names = digits_image_folder(tmp_path / "public", per_class=6, classes=3, size=16)
    context = digits_context(labels=(0, 1, 2), shape=(8, 8), max_value=16.0, names=tuple(names))
    gen = make_generator("public_data", {"path": str(tmp_path / "public")}, context)
    batch = gen.random(np.array([0, 1, 2, 2]), seed=0)
    assert batch.samples.shape == (4, 8, 8) and batch.samples.max() <= 16.0
    assert [gen.public_labels[i] for i in batch.params["public_index"]] == [0, 1, 2, 2]


@pytest.mark.parametrize("options, field", [
    ({"path": "/nonexistent/public"}, "generator.options.path"),
    ({"path": "{tmp}/empty"}, "generator.options.path"),
    ({"path": "{tmp}/not.npz"}, "generator.options.path"),
    ({"path": "{tmp}/empty", "colour": "red"}, "generator.options.colour"),
    ({"path": "{npz}", "embedder": "nope"}, "generator.options.embedder"),
])
def test_bad_options_are_refused_before_any_private_data_is_read(tmp_path, public_npz, options, field, monkeypatch):
    from privevo.pipelines.data import arrays

    (tmp_path / "empty").mkdir()
    (tmp_path / "not.npz").write_bytes(b"not a zip")
    options = {k: v.format(tmp=tmp_path, npz=public_npz[0]) if isinstance(v, str) else v for k, v in options.items()}
    private = tmp_path / "private.npz"
    np.savez(private, samples=np.zeros((20, 8, 8), np.float32), labels=np.arange(20) % 10, max_value=np.float32(16))
    read = arrays.npz_arrays

    def no_private_records(path, names, field):  # headers and max_value are public; records are not
        assert not (path == private and "samples" in names), "private records read before the options were checked"
        return read(path, names, field)

    monkeypatch.setattr(arrays, "npz_arrays", no_private_records)
    config = small_config(**{"data.kind": "arrays", "data.path": str(private), "data.class_names": list(DIGITS),
                             "generator.kind": "public_data", "generator.options": options})
    with pytest.raises(ConfigError) as info:
        synthesize(config, tmp_path / "run")
    assert info.value.field == field
    assert not (tmp_path / "run").exists()


def test_options_are_typed():
    with pytest.raises(Exception):
        PublicDataOptions.model_validate({"path": "."})  # a folder without images
    assert PublicDataGenerator.Options is PublicDataOptions


@pytest.mark.slow
def test_pe_with_a_public_prior_releases_only_public_images(tmp_path, public_npz):
    """A whole PE run (in-process engine, seeded test noise) on a private digits set disjoint from the
    public one: every released sample is exactly one of the public images, of its own class, and PE
    does better than the public draws it starts from when the public pool is unlabelled."""
    from sklearn.datasets import load_digits

    path, images, labels = public_npz  # the last 300 rows of load_digits
    digits = load_digits()
    x, y = digits.images.astype(np.float32), digits.target
    arrays, held = tmp_path / "private.npz", tmp_path / "heldout.npz"  # rows 0..599 private, 600..999 held
    np.savez(arrays, samples=x[:600], labels=y[:600], max_value=np.float32(16.0))  # out: apart from the public
    np.savez(held, samples=x[600:1000], labels=y[600:1000], max_value=np.float32(16.0))
    overrides = {"data.kind": "arrays", "data.path": str(arrays), "data.class_names": list(DIGITS),
                 "data.heldout": "path", "data.heldout_path": str(held), "data.public_size": 600,
                 "generator.kind": "public_data", "resources.engine": "in_process", "generations": 3,
                 "privacy.epsilon": 4.0}
    config = small_config(**overrides, **{"generator.options": {"path": str(path), "classes": "any"}})
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=11)
    table = pq.read_table(tmp_path / "run" / "synthetic.parquet")
    index = np.asarray(table.column("param_public_index").to_pylist())
    from privevo.pipelines.data import read_synthetic

    samples, synth_labels, _, _ = read_synthetic(tmp_path / "run" / "synthetic.parquet")
    assert len(index) == 10 * config.population.final_per_class
    flat = images.reshape(len(images), -1)
    for sample, i in zip(samples.reshape(len(samples), -1), index):
        assert np.array_equal(sample, flat[i])  # exactly that public image
        assert np.abs(flat - sample).sum(1).min() == 0
    # the votes chose images of the right class from the unlabelled pool (chance: 0.1)
    assert (labels[index] == synth_labels).mean() > 0.6
    report = result.report
    assert report["evaluation"]["accuracy"] > report["evaluation"]["baselines"]["generation0"]["accuracy"] + 0.2
    # the public set is a declared public input: the run is rebuilt from it and the releases alone
    import json
    import shutil

    from privevo.pipelines.evolution import rebuild
    from privevo.pipelines.report import strip_side_channels

    shutil.move(arrays, tmp_path / "away.npz")  # the private data is gone
    rebuild(tmp_path / "run", tmp_path / "rebuilt")
    same = (tmp_path / "rebuilt" / "synthetic.parquet").read_bytes() == (tmp_path / "run" / "synthetic.parquet").read_bytes()
    assert same
    rebuilt = json.loads((tmp_path / "rebuilt" / "report.json").read_text())
    assert strip_side_channels(rebuilt) == strip_side_channels(json.loads((tmp_path / "run" / "report.json").read_text()))


def test_parquet_shards_are_a_public_set_too(tmp_path, public_npz):
    """Two shards of PNG-encoded digits (the Hugging Face struct layout), read at the private size."""
    import io

    import pyarrow as pa

    _, images, labels = public_npz
    root = tmp_path / "shards"
    root.mkdir()
    for part, rows in enumerate((range(0, 40), range(40, 90))):
        pngs = []
        for r in rows:
            buffer = io.BytesIO()
            Image.fromarray(np.round(images[r] / 16 * 255).astype(np.uint8)).save(buffer, format="PNG")
            pngs.append({"bytes": buffer.getvalue(), "path": None})
        pq.write_table(pa.table({"image": pngs, "label": labels[list(rows)]}), root / f"part-{part}.parquet")
    gen = make_generator("public_data", {"path": str(root)}, digits_context())
    assert len(gen.images) == 90 and gen.classes == "match"
    batch = gen.random(np.arange(10), seed=0)
    index = batch.params["public_index"]
    assert np.array_equal(labels[index], np.arange(10))
    # 8-bit round trip, 0..255 back to 0..16: within half an 8-bit level of the public pixels
    assert np.abs(batch.samples - images[index]).max() <= 16 / 255 / 2 + 1e-5


def test_the_shipped_config_passes_every_check(tmp_path):
    """configs/digits-public-prior.yaml with the split the benchmark writes: the driver's checks pass;
    the public set's path missing is refused naming generator.options.path."""
    from pathlib import Path

    from benchmarks.public_prior import PUBLIC_SIZE, write_split
    from privevo.pipelines.checks import check_config, check_data
    from privevo.pipelines.config import load_config

    config_path = Path(__file__).resolve().parents[1] / "configs" / "digits-public-prior.yaml"
    paths = write_split(tmp_path / "split")
    public, private = np.load(paths["public"]), np.load(paths["private"])
    assert len(public["labels"]) == PUBLIC_SIZE == len(private["labels"])
    # the public and private sets are apart: no public digit is also a private or held-out one
    seen = {x.tobytes() for x in private["samples"]} | {x.tobytes() for x in private["heldout_samples"]}
    assert not any(x.tobytes() in seen for x in public["samples"])
    data = [f"data.path={paths['private']}", f"data.heldout_path={paths['private']}"]
    config = load_config(config_path, [*data, f"generator.options.path={paths['public']}"])
    check_config(config, "digits-public-prior.yaml")
    check_data(config, "digits-public-prior.yaml")
    with pytest.raises(ConfigError) as info:
        check_config(load_config(config_path, [*data, f"generator.options.path={tmp_path / 'gone.npz'}"]), "x")
    assert info.value.field == "generator.options.path"


def test_a_declared_public_class_without_images_is_refused(public_npz, tmp_path):
    path, images, labels = public_npz
    few = tmp_path / "few.npz"  # declares ten names, holds digits 0..8 only
    keep = labels != 9
    np.savez(few, samples=images[keep], labels=labels[keep], max_value=np.float32(16.0))
    with pytest.raises(ValueError, match=r"generator\.options\.classes.*'9'"):
        make_generator("public_data", {"path": str(few), "class_names": list(DIGITS)}, digits_context())
