"""Several foundation models in one run (``generators:`` as a list): the config, the split of
generation 0, lineage by model, resume/rebuild/engines, and a good model outvoting a useless one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import differences, small_config
from privevo.actors import plugins
from privevo.actors.generators.base import SampleBatch
from privevo.pipelines import checks
from privevo.pipelines.checks import check_config, check_resume
from privevo.pipelines.config import ConfigError, dump_config, load_config
from privevo.pipelines.engines import Work, in_process_engine
from privevo.pipelines.evolution import parent_selector, rebuild, synthesize
from privevo.pipelines.hooks import RunObserver
from privevo.pipelines.mixture import split_counts
from privevo.pipelines.population import join_models, model_batch, model_runs
from privevo.pipelines.privacy import PrivacyLedger
from privevo.pipelines.report import strip_side_channels

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")
ROOT = Path(__file__).resolve().parents[1]
NOISE_SEED = 99
# Two built-in models with different priors: the default fonts, and one hand style only.
TWO_SIMULATORS = "[{kind: simulator, share: 0.5}, {kind: simulator, options: {fonts: [hand-0]}, share: 0.5}]"


def mixture_config(generators: str = TWO_SIMULATORS, **overrides):
    return small_config(generators=generators, **{"resources.engine": "in_process", **overrides})


def rows(run_dir: Path) -> dict:
    return pq.read_table(run_dir / "synthetic.parquet").drop_columns(["png"]).to_pydict()


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """examples/blobs installed (pip, offline) into a folder on sys.path, as tests/test_plugins.py does."""
    root = tmp_path_factory.mktemp("blobs")
    source = shutil.copytree(ROOT / "examples" / "blobs", root / "src",
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(root / "site"), str(source)], check=True)
    sys.path.insert(0, str(root / "site"))
    plugins.refresh()
    yield
    sys.path.remove(str(root / "site"))
    plugins.refresh()


# --------------------------------------------------------------------------- the config


def test_a_mixture_is_data_and_round_trips_through_its_yaml():
    config = mixture_config("[{kind: simulator, share: 3}, {kind: simulator, share: 1, actors: 2, name: hand, "
                            "options: {fonts: [hand-0]}}]")
    assert config.mixture and config.model_names == ["simulator", "hand"] and config.generator_actors == 3
    assert [m.actors for m in config.models] == [1, 2]
    assert load_config_from_text(dump_config(config)) == config
    assert "generator:" not in dump_config(config)  # the unused single-model section is not written
    single = small_config()
    assert not single.mixture and single.generator_actors == 2 and single.model_names == ["simulator"]


def load_config_from_text(text: str):
    import yaml

    from privevo.pipelines.config import parse_config

    return parse_config(yaml.safe_load(text), "dumped")


@pytest.mark.parametrize("generators, overrides, field", [
    ("[{kind: simulator, share: 0}]", {}, "generators.0.share"),
    ("[{kind: simulator, share: .nan}]", {}, "generators.0.share"),
    ("[{kind: simulator, share: 1}, {kind: nope, share: 1}]", {}, "generators.1.kind"),
    ("[{kind: simulator, share: 1, actors: 0}]", {}, "generators.0.actors"),
    ("[{kind: simulator, share: 1, colour: red}]", {}, "generators.0.colour"),
    ("[]", {}, "generators"),
    ("0", {}, "generators"),
    ("[{kind: simulator, share: 1}]", {"generator.kind": "llm"}, "generator"),
    ("[{kind: simulator, share: 1, name: a}, {kind: simulator, share: 1, name: a}]", {}, "generators"),
])
def test_a_bad_mixture_is_refused_naming_its_field(generators, overrides, field):
    with pytest.raises(ConfigError) as info:
        small_config(generators=generators, **overrides)
    assert info.value.field == field


@pytest.mark.parametrize("generators, field", [
    # each entry's options are typed by its own kind's Options model
    ("[{kind: simulator, share: 1}, {kind: simulator, share: 1, options: {width: 2}}]", "generators.1.options.width"),
    ("[{kind: simulator, share: 1}, {kind: simulator, share: 1, options: {image_size: -1}}]",
     "generators.1.options.image_size"),
    # and each must make the data's modality
    ("[{kind: simulator, share: 1}, {kind: llm, share: 1, options: {model_path: MODEL}}]", "generators.1.kind"),
])
def test_each_model_is_checked_as_its_own_generator_before_any_private_data_is_read(
        generators, field, tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a text model's folder: it makes no images
    generators = generators.replace("MODEL", str(tmp_path / "model"))
    def no_private_read(*_, **__):
        raise AssertionError("private data read before the config was checked")

    monkeypatch.setattr(checks, "check_private_labels", no_private_read)
    with pytest.raises(ConfigError) as info:
        synthesize(mixture_config(generators), tmp_path / "run")
    assert info.value.field == field
    assert not (tmp_path / "run").exists()


def test_a_resume_may_change_a_models_actors_but_not_its_share_or_options(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(mixture_config()))
    more_actors = TWO_SIMULATORS.replace("share: 0.5}]", "share: 0.5, actors: 3}]")
    assert more_actors != TWO_SIMULATORS
    check_resume(mixture_config(more_actors), run_dir, "x")
    for changed, field in [(TWO_SIMULATORS.replace("share: 0.5}]", "share: 0.7}]"), "generators.1.share"),
                           (TWO_SIMULATORS.replace("hand-0", "hand-1"), "generators.1.options.fonts.0"),
                           ("2", "generators")]:
        with pytest.raises(ConfigError) as info:
            check_resume(mixture_config(changed), run_dir, "x")
        assert info.value.field == field


# --------------------------------------------------------------------------- the pieces


def test_the_split_sums_to_the_count_and_keeps_each_share_in_expectation():
    shares = [0.5, 0.3, 0.2]
    for n in (1, 7, 24, 101):
        counts = split_counts(shares, n, np.random.default_rng(n))
        assert counts.sum() == n and np.all(counts >= np.floor(n * np.array(shares)))
    np.testing.assert_array_equal(split_counts(shares, 7, np.random.default_rng(3)),
                                  split_counts(shares, 7, np.random.default_rng(3)))  # seeded
    mean = np.mean([split_counts([1, 1, 1], 4, np.random.default_rng(s)) for s in range(3000)], axis=0)
    np.testing.assert_allclose(mean, 4 / 3, atol=0.05)  # 1.33 each, though 4 does not split evenly


def test_models_keep_their_own_params_in_one_batch():
    a = SampleBatch(labels=[0, 1], samples=np.zeros((2, 2)), params={"x": np.array([1.0, 2.0])})
    b = SampleBatch(labels=[0], samples=np.ones((1, 2)), params={"x": np.array([[5, 6]]), "y": np.array(["t"])})
    batch, model = join_models([a, b, a], [0, 1, 0])
    assert model.tolist() == [0, 0, 1, 0, 0]
    assert sorted(batch.params) == ["m0.x", "m1.x", "m1.y"]  # same name, other shape: kept apart
    back = model_batch(batch.take(np.flatnonzero(model == 1)), 1)
    assert sorted(back.params) == ["x", "y"] and back.params["x"].tolist() == [[5, 6]]
    assert model_batch(batch.take([0, 1]), 0).params["x"].tolist() == [1.0, 2.0]
    runs = model_runs(np.array([0, 0, 1, 1, 0]), np.array([0, 1, 2, 3, 4]))
    assert [(m, r.tolist()) for m, r in runs] == [(0, [0, 1]), (1, [2, 3]), (0, [4])]


def test_generation_0_splits_each_class_and_a_variation_is_made_by_its_parents_model():
    config = mixture_config()
    _, info, labels = check_config(config, "test")
    engine = in_process_engine(config, info, labels)
    s0 = engine.generate(Work.fresh(0, 24), vote_for=1)
    for label in labels:  # 12 + 12 of every class, class-major
        assert np.bincount(s0.model[s0.class_rows(label)], minlength=2).tolist() == [12, 12]
    assert np.all(np.diff(s0.batch.labels) >= 0)
    counts = engine.vote(s0, 1)
    parents = parent_selector(config, labels, 0.0)(s0, counts.astype(float), 1, 24)
    s1 = engine.generate(Work.variation(parents, 0.5, 1))
    made_by = dict(zip(s0.ids, s0.model))
    assert [made_by[p] for p in s1.parent_ids] == s1.model.tolist()
    assert np.bincount(s1.model).tolist() == np.bincount(parents.models).tolist()
    # the hand-style model draws with its one font
    assert set(s1.batch.params["m1.font"][s1.model == 1]) == {0}


# --------------------------------------------------------------------------- runs


def test_a_one_model_list_gives_the_samples_of_the_single_model_config(tmp_path):
    single = synthesize(small_config(**{"resources.engine": "in_process", "generations": 2}), tmp_path / "single",
                        insecure_noise_seed=NOISE_SEED)
    listed = synthesize(mixture_config("[{kind: simulator, share: 1, actors: 2}]", generations=2),
                        tmp_path / "listed", insecure_noise_seed=NOISE_SEED)
    a, b = rows(single.run_dir), rows(listed.run_dir)
    assert "model" not in a and set(b["model"]) == {0}
    for column in ("id", "label", "parent_id", "image"):
        assert a[column] == b[column], column
    assert a["param_font"] == b["param_m0.font"]


class Crash(RuntimeError):
    pass


class CrashAfterRelease(RunObserver):
    def __init__(self, generation: int) -> None:
        self.generation = generation

    def released(self, generation: int) -> None:
        if generation == self.generation:
            raise Crash(f"after release {generation}")


def test_a_mixture_resumed_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    reference = synthesize(mixture_config(), tmp_path / "reference", insecure_noise_seed=NOISE_SEED)
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        synthesize(mixture_config(), run_dir, insecure_noise_seed=NOISE_SEED, observer=CrashAfterRelease(1))
    assert PrivacyLedger(run_dir).generations() == [1]
    assert "model" in pq.read_table(next((run_dir / "checkpoint").glob("population-*.parquet"))).column_names
    # resumed with more actors for one model (shard seeds do not depend on actors)
    more = TWO_SIMULATORS.replace("share: 0.5}]", "share: 0.5, actors: 2}]")
    assert more != TWO_SIMULATORS
    synthesize(mixture_config(more), run_dir, resume=True, insecure_noise_seed=NOISE_SEED)
    assert rows(run_dir) == rows(reference.run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["generations"][-1]["models"] == reference.report["generations"][-1]["models"]


def test_a_mixture_is_rebuilt_from_its_releases(tmp_path):
    run = synthesize(mixture_config(generations=2), tmp_path / "run", insecure_noise_seed=NOISE_SEED)
    rebuild(run.run_dir, tmp_path / "rebuilt")
    assert differences(run.run_dir, tmp_path / "rebuilt") == []
    assert (tmp_path / "rebuilt" / "models.png").stat().st_size > 1000


@pytest.mark.slow
def test_both_engines_give_the_same_mixture_run(tmp_path, ray_session):
    two_actors = TWO_SIMULATORS.replace("share: 0.5}]", "share: 0.5, actors: 2}]")
    on_ray = synthesize(mixture_config(two_actors, **{"resources.engine": "ray"}), tmp_path / "ray",
                        insecure_noise_seed=NOISE_SEED)
    local = synthesize(mixture_config(two_actors), tmp_path / "local", insecure_noise_seed=NOISE_SEED)
    assert rows(on_ray.run_dir) == rows(local.run_dir)
    a, b = PrivacyLedger(on_ray.run_dir), PrivacyLedger(local.run_dir)
    for t in a.generations():
        np.testing.assert_array_equal(a.load_release(t), b.load_release(t))
    assert strip_side_channels(on_ray.report) == strip_side_channels(local.report)


def test_lookahead_varies_each_sample_with_its_own_model(blobs):
    config = mixture_config("[{kind: simulator, share: 0.5}, {kind: blobs, share: 0.5}]", **{"vote.lookahead": 2})
    _, info, labels = check_config(config, "test")
    engine = in_process_engine(config, info, labels)
    seen = {0: set(), 1: set()}
    for m in (0, 1):
        for handle in engine.actors_of(m):
            worker = handle._obj
            original = worker.lookahead

            def spy(parents, degree, count, seed, m=m, original=original):
                seen[m].update(parents.params)
                return original(parents, degree, count, seed)
            worker.lookahead = spy
    s0 = engine.generate(Work.fresh(0, 24))
    assert engine.vote(s0, 1).shape == (len(s0),)
    assert seen[1] == {"centre"} and "font" in seen[0] and "centre" not in seen[0]


def test_a_good_model_outvotes_a_useless_one(blobs, tmp_path):
    """The digit simulator and blobs (one Gaussian blob an image: no digit) in equal shares, on the
    digits demo config at a small size and the demo's epsilon 1: the votes keep the simulator's
    samples, generation by generation; its share of the released set exceeds 0.9."""
    config = load_config(ROOT / "configs" / "digits.yaml", [
        "generators=[{kind: simulator, share: 0.5}, {kind: blobs, share: 0.5, options: {width: 1.2}}]",
        "resources.engine=in_process", "population.per_class=40", "population.final_per_class=100",
        "generations=4"])
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=3)
    shares = [g["models"]["overall"]["simulator"] for g in result.report["generations"]]
    assert shares[0] == 0.5
    assert all(b >= a for a, b in zip(shares, shares[1:])) and shares[1] > 0.6
    assert shares[-1] > 0.9 and result.report["models"]["final"]["overall"]["simulator"] == shares[-1]
    table = pq.read_table(result.run_dir / "synthetic.parquet")
    model = np.array(table.column("model").to_pylist())
    assert np.mean(model == 0) == shares[-1]
    assert json.loads(table.schema.metadata[b"models"]) == ["simulator", "blobs"]
    assert (result.run_dir / "models.png").stat().st_size > 1000
    assert "models.png" in result.report["outputs"]["plots"]
    assert "blobs" in result.report["privacy"]["assumed_public"]["generator"]
