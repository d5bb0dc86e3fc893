"""The algorithm behind one engine interface: both engines give the same run, and the
lifecycle events come in their contracted order."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from privevo.actors.generators.base import SampleBatch
from conftest import small_config
from privevo.pipelines.engines import Work
from privevo.pipelines.evolution import synthesize
from privevo.pipelines.hooks import RunObserver
from privevo.pipelines.pe import Schedule, private_evolution
from privevo.pipelines.population import ID_STRIDE, Parents, Population
from privevo.pipelines.privacy import PrivacyLedger
from privevo.pipelines.report import strip_side_channels

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")
NOISE_SEED = 99


# --------------------------------------------------------------------------- the loop, alone


class FakeEngine:
    """Two classes, one-number samples: S_t's values are the generation that made them."""

    def __init__(self, log):
        self.log = log

    def generate(self, work: Work, *, vote_for=None):
        self.log.append(("generate", work.generation, vote_for))
        n = work.per_class
        labels = np.repeat([0, 1], n)
        batch = SampleBatch(labels=labels, samples=np.full((2 * n, 1), float(work.generation)), params={})
        return Population(ids=work.generation * ID_STRIDE + np.arange(2 * n), parent_ids=np.full(2 * n, -1),
                          generation=np.full(2 * n, work.generation), batch=batch)

    def vote(self, population, generation):
        self.log.append(("vote", generation))
        return np.ones(len(population), dtype=np.int64)


class FakeReleases:
    def __init__(self, log, recorded=()):
        self.log, self._recorded = log, set(recorded)

    def recorded(self, t):
        return t in self._recorded

    def replay(self, t):
        self.log.append(("replay", t))
        return np.ones(6)

    def draw(self, t, counts):
        self.log.append(("draw", t))
        self._recorded.add(t)
        return counts.astype(float)


class RecordingHooks:
    def __init__(self, log):
        self.log = log

    def released(self, t):
        self.log.append(("released", t))

    def population_made(self, t, population, histogram):
        self.log.append(("made", t))


def schedule(T=3):
    def select(population, histogram, t, n):
        return Parents(of=population, rows=np.concatenate([population.class_rows(c)[:1].repeat(n) for c in (0, 1)]),
                       per_class=n)

    return Schedule(generations=T, per_class=3, final_per_class=5, degree=lambda t: 0.5, final_degree=0.1,
                    select=select)


def test_events_come_in_the_contracted_order():
    log = []
    private_evolution(FakeEngine(log), FakeReleases(log), schedule(), RecordingHooks(log))
    assert log == [
        ("generate", 0, 1), ("made", 0),
        ("vote", 1), ("draw", 1), ("released", 1), ("generate", 1, 2), ("made", 1),
        ("vote", 2), ("draw", 2), ("released", 2), ("generate", 2, 3), ("made", 2),
        ("vote", 3), ("draw", 3), ("released", 3), ("generate", 3, None), ("made", 3),
    ]


def test_recorded_releases_are_replayed_never_voted_on_or_drawn():
    log = []
    start = FakeEngine([]).generate(Work.fresh(1, 3))
    private_evolution(FakeEngine(log), FakeReleases(log, recorded={1, 2}), schedule(), RecordingHooks(log),
                      start=start, done=1)
    assert ("vote", 2) not in log and ("draw", 2) not in log and ("released", 2) not in log
    assert log[:3] == [("replay", 2), ("generate", 2, 3), ("made", 2)]
    assert log[3:6] == [("vote", 3), ("draw", 3), ("released", 3)]


# --------------------------------------------------------------------------- both engines


def rows(run_dir):
    return pq.read_table(run_dir / "synthetic.parquet").drop_columns(["png"]).to_pydict()


@pytest.mark.slow
def test_in_process_and_ray_engines_give_the_same_run(tmp_path, ray_session):
    ray_run = synthesize(small_config(), tmp_path / "ray", insecure_noise_seed=NOISE_SEED)
    local = synthesize(small_config(**{"resources.engine": "in_process"}), tmp_path / "local",
                       insecure_noise_seed=NOISE_SEED)
    assert rows(ray_run.run_dir) == rows(local.run_dir)
    a, b = PrivacyLedger(ray_run.run_dir), PrivacyLedger(local.run_dir)
    for t in a.generations():
        np.testing.assert_array_equal(a.load_release(t), b.load_release(t))
    report_a = strip_side_channels(json.loads((ray_run.run_dir / "report.json").read_text()))
    report_b = strip_side_channels(json.loads((local.run_dir / "report.json").read_text()))
    assert report_a == report_b


@pytest.mark.slow
def test_the_observer_hears_the_events_in_their_contracted_order(tmp_path):
    """engine_started; per generation drawing_release(t) then released(t), the latter after
    release t is on disk; the checkpoint of S_t only after release t + 1 is drawn (written
    behind it), S_T's last; finishing before the report exists."""
    run_dir = tmp_path / "run"
    log = []

    class Log(RunObserver):
        def engine_started(self, engine):
            log.append(("engine_started",))

        def drawing_release(self, t):
            log.append(("drawing", t, PrivacyLedger(run_dir).generations()))

        def released(self, t):
            log.append(("released", t, PrivacyLedger(run_dir).generations()))

        def writing_checkpoint(self, t):
            log.append(("checkpoint", t))

        def finishing(self):
            log.append(("finishing", (run_dir / "report.json").exists()))

    synthesize(small_config(**{"resources.engine": "in_process", "generations": 2}), run_dir,
               insecure_noise_seed=NOISE_SEED, observer=Log())
    assert log[0] == ("engine_started",) and log[-1] == ("finishing", False)
    assert [e for e in log if e[0] in ("drawing", "released")] == [
        ("drawing", 1, []), ("released", 1, [1]), ("drawing", 2, [1]), ("released", 2, [1, 2])]
    order = [e[:2] for e in log]
    assert order.index(("checkpoint", 0)) > order.index(("drawing", 1))  # S_0 is written behind release 1
    assert order.index(("checkpoint", 1)) > order.index(("drawing", 2))
    assert order[-2] == ("checkpoint", 2)


@pytest.mark.slow
def test_the_synthetic_set_loads_with_hugging_face_datasets(tmp_path):
    import datasets

    run = synthesize(small_config(**{"resources.engine": "in_process", "generations": 1}), tmp_path / "run",
                     insecure_noise_seed=NOISE_SEED)
    ds = datasets.load_dataset("parquet", data_files=str(run.run_dir / "synthetic.parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.features["label"].names == [str(i) for i in range(10)]
    first = ds[0]
    assert first["png"].size == (8, 8)  # decoded as an image
    assert ds.features["label"].int2str(first["label"]) == str(first["label"])
    assert len(ds) == 10 * small_config().population.final_per_class
