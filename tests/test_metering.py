"""Metering: the critical path and overhead add up, GPU-hours arithmetic, the report's cost section."""

import json
import sys
import types

import pytest
from conftest import small_config

from privevo.pipelines.gpu_utilization import (
    UtilizationSampler,
    integrate_utilization,
    nvml_reader,
)
from privevo.pipelines.metering import (
    DRIVER_STAGES,
    ActorMeter,
    ActorUsage,
    GenerationMeter,
    MeteredRay,
    StageTiming,
    meter_generation,
    run_cost,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- GPU arithmetic


def test_utilization_integral_counts_each_reading_over_its_own_period():
    readings = [(0.0, 0.0), (1.0, 1.0), (2.0, 0.5), (4.0, 0.0)]
    assert integrate_utilization(readings, 0.0, 4.0) == pytest.approx(1.5)
    # a window cutting periods counts only the overlap: (0.5..1] at 100%, (1..2] at 50%... to 1.5
    assert integrate_utilization(readings, 0.5, 1.5) == pytest.approx(0.5 + 0.25)
    assert integrate_utilization(readings, 5.0, 6.0) == 0.0


def test_actor_meter_integrates_fake_nvml_into_gpu_hours():
    clock = FakeClock()
    values = iter([0.0, 100.0, 50.0, 0.0])  # percent, as NVML reports
    sampler = UtilizationSampler(lambda: next(values), clock=clock, background=False)
    meter = ActorMeter(sampler=sampler, clock=clock, cpu_clock=lambda: 0.0)
    with meter.section("generate", samples=500):  # reading 0% at t=0
        clock.now = 1.0
        sampler.sample()  # 100% over (0, 1]
        clock.now = 2.0
        sampler.sample()  # 50% over (1, 2]
        clock.now = 4.0  # closing reading: 0% over (2, 4]
    stats = meter.stats()
    section = stats["sections"]["generate"]
    assert stats["gpu"] and stats["gpu_busy_measured"]
    assert section["wall_seconds"] == pytest.approx(4.0)
    assert section["gpu_busy_seconds"] == pytest.approx(1.5)
    assert section["samples"] == 500
    assert meter.stats()["sections"] == {}  # stats are deltas

    # One generation: the GPU actor (half a GPU) is held for the whole 5 s generation.
    stages = {"generate": StageTiming(wall_seconds=4.0), "release": StageTiming(wall_seconds=1.0)}
    actor = ActorUsage("generators", stats["sections"], cpus=1.0, gpus=0.5, device="0")
    record = meter_generation(stages, [actor], samples=500, wall_seconds=5.0)
    assert record["gpu_allocated_seconds"] == pytest.approx(2.5)
    assert record["gpu_busy_seconds"] == pytest.approx(1.5)
    assert record["gpu_idle_seconds"] == pytest.approx(1.0)
    assert record["gpu_hours"] == pytest.approx(2.5 / 3600)
    assert record["gpu_hours_per_1000_samples"] == pytest.approx(2.5 / 3600 / 500 * 1000)
    assert record["stages"]["generate"]["gpu_allocated_seconds"] == pytest.approx(2.0)
    assert record["stages"]["generate"]["gpu_idle_seconds"] == pytest.approx(0.5)
    assert record["stages"]["release"]["gpu_idle_seconds"] == pytest.approx(0.5)  # held, unused
    assert record["cpu_allocated_seconds"] == pytest.approx(5.0)


def test_actors_sharing_one_device_are_capped_at_its_allocation():
    # NVML is device-wide: two quarter-GPU actors on device 0 both see 3 s of kernels.
    sections = {"generate": {"calls": 1, "samples": 10, "wall_seconds": 4.0, "cpu_seconds": 0.0,
                             "gpu_busy_seconds": 3.0}}
    actors = [ActorUsage("generators", sections, gpus=0.25, device="0") for _ in range(2)]
    record = meter_generation({"generate": StageTiming(wall_seconds=4.0)}, actors, samples=20, wall_seconds=5.0)
    assert record["gpu_allocated_seconds"] == pytest.approx(2.5)
    assert record["gpu_busy_seconds"] == pytest.approx(2.5)
    other = [ActorUsage("generators", sections, gpus=0.25, device=d) for d in ("0", "1")]
    record = meter_generation({"generate": StageTiming(wall_seconds=4.0)}, other, samples=20, wall_seconds=5.0)
    assert record["gpu_busy_seconds"] == pytest.approx(2.5)  # each device: min(1.25, 3)


def test_nvml_reader_finds_the_visible_device(monkeypatch):
    calls = []

    class Rates:
        gpu = 37

    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlDeviceGetHandleByIndex=lambda i: ("index", i),
        nvmlDeviceGetHandleByUUID=lambda u: ("uuid", u),
        nvmlDeviceGetDeviceHandleFromMigDeviceHandle=lambda h: ("parent", h),
        nvmlDeviceGetUtilizationRates=lambda h: calls.append(h) or Rates(),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert nvml_reader("3,1")() == 37.0
    assert calls[-1] == ("index", 3)
    nvml_reader("GPU-abc")()
    assert calls[-1] == ("uuid", b"GPU-abc")
    nvml_reader("MIG-xyz")()
    assert calls[-1] == ("parent", ("uuid", b"MIG-xyz"))


def test_gpu_actor_without_nvml_still_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    meter = ActorMeter(gpu=True)
    with meter.section("vote", samples=3):
        pass
    stats = meter.stats()
    assert stats["gpu"] and not stats["gpu_busy_measured"]
    assert "ImportError" in meter.gpu_error or "ModuleNotFoundError" in meter.gpu_error


# ---------------------------------------------------------------------- critical path


def _section(wall, samples=0):
    return {"calls": 1, "samples": samples, "wall_seconds": wall, "cpu_seconds": wall, "gpu_busy_seconds": 0.0}


def test_critical_path_takes_the_busiest_actor_per_layer():
    stages = {
        "generate": StageTiming(wall_seconds=3.5, ray_seconds=3.4),  # driver work 0.1
        "vote": StageTiming(wall_seconds=2.0, ray_seconds=1.95),  # driver work 0.05
        "release": StageTiming(wall_seconds=0.2),
        "checkpoint": StageTiming(wall_seconds=10.0, ray_seconds=0.0),
    }
    actors = [
        ActorUsage("generators", {"generate": _section(3.0, 600), "lookahead": _section(0.4)}),
        ActorUsage("generators", {"generate": _section(2.0, 400), "lookahead": _section(0.3)}),
        ActorUsage("voters", {"embed": _section(1.0, 1000), "vote": _section(0.5, 1000)}),
    ]
    m = meter_generation(stages, actors, samples=1000, wall_seconds=16.0)
    assert m["stages"]["generate"]["critical_seconds"] == pytest.approx(3.1)
    assert m["stages"]["vote"]["critical_seconds"] == pytest.approx(0.05 + 0.4 + 1.5)
    assert m["stages"]["generate"]["samples"] == 1000
    kinds = m["critical_seconds_by_kind"]
    assert kinds["lookahead"] == pytest.approx(0.4) and kinds["embed"] == pytest.approx(1.0)
    assert kinds["vote"] == pytest.approx(0.5 + 0.05)
    assert sum(kinds.values()) == pytest.approx(m["critical_path_seconds"])
    assert m["critical_path_seconds"] == pytest.approx(3.1 + 1.95 + 0.2 + 10.0)
    assert m["overhead_seconds"] == pytest.approx(16.0 - m["critical_path_seconds"])
    # work that cannot fit in a stage's wall is capped at it (driver and actors overlapped)
    over = meter_generation({"generate": StageTiming(wall_seconds=1.0)}, actors[:1], samples=600, wall_seconds=1.0)
    assert over["stages"]["generate"]["critical_seconds"] == pytest.approx(1.0)
    assert over["overhead_seconds"] == pytest.approx(0.0)


def test_background_driver_work_is_off_the_critical_path():
    stages = {"generate": StageTiming(wall_seconds=2.0, ray_seconds=1.9),
              "checkpoint": StageTiming(wall_seconds=0.01)}
    actors = [ActorUsage("generators", {"generate": _section(1.8, 100)})]
    plain = meter_generation(stages, actors, samples=100, wall_seconds=2.1)
    beside = meter_generation(stages, actors, samples=100, wall_seconds=2.1, background={"checkpoint": 0.7})
    assert beside["critical_path_seconds"] == pytest.approx(plain["critical_path_seconds"])
    assert beside["overhead_seconds"] == pytest.approx(plain["overhead_seconds"])
    assert beside["background_seconds"] == {"checkpoint": 0.7}
    assert beside["cpu_seconds"] == pytest.approx(plain["cpu_seconds"] + 0.7)


def test_work_done_ahead_is_handed_over_tagged_with_its_generation():
    clock = FakeClock()
    meter = ActorMeter(clock=clock, cpu_clock=clock)
    with meter.section("generate", samples=10):
        clock.now += 1.0
    with meter.tagged(5), meter.section("vote", samples=10):  # the vote for release 5, sent ahead
        clock.now += 0.5
    stats = meter.stats()
    assert set(stats["sections"]) == {"generate"}
    assert stats["tagged"][5]["vote"]["wall_seconds"] == pytest.approx(0.5)
    assert stats["busy_seconds"] == pytest.approx(1.5)
    assert meter.stats()["tagged"] == {}  # handed over once
    usage = ActorUsage("voters", {"vote": _section(0.25, 4)})
    usage.merge(stats["tagged"][5])
    assert usage.sections["vote"]["wall_seconds"] == pytest.approx(0.75)
    assert usage.sections["vote"]["samples"] == 14


def test_submitting_actor_calls_is_ray_time_unless_they_run_in_this_process():
    class Cluster:
        pass

    class InProcess:
        in_process = True

    for ray, expected in ((Cluster(), 0.2), (InProcess(), 0.0)):
        clock = FakeClock()
        metered = MeteredRay(ray, clock=clock)
        metered.meter = GenerationMeter(clock=clock, cpu_clock=clock)
        with metered.meter.stage("generate"):
            with metered.dispatch():
                clock.now += 0.2  # serialising the calls' arguments (or, in process, the work)
            clock.now += 0.1
        timing = metered.meter.stages["generate"]
        assert timing.ray_seconds == pytest.approx(expected)
        assert timing.driver_work_seconds == pytest.approx(0.3 - expected)


def test_generation_meter_refuses_unknown_stages_and_times_known_ones():
    clock = FakeClock()
    meter = GenerationMeter(clock=clock, cpu_clock=clock)
    with pytest.raises(ValueError, match="unknown stage"), meter.stage("bake"):
        pass
    with meter.stage("select"):
        clock.now += 2.0
        meter.ray_call(0.5)
    meter.ray_call(9.0)  # outside every stage: not stage time
    assert meter.stages["select"].wall_seconds == 2.0
    assert meter.stages["select"].driver_work_seconds == 1.5


# ---------------------------------------------------------------------- a real run


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")
def test_report_metering_adds_up_on_a_real_run(tmp_path, ray_session):
    from privevo.pipelines.evolution import synthesize

    config = small_config()
    result = synthesize(config, tmp_path / "run", insecure_noise_seed=3)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    generations = report["generations"]
    assert [g["generation"] for g in generations] == list(range(config.generations + 1))
    for g in generations:
        m = g["metering"]
        # S_t is checkpointed during generation t + 1 (its write on a background thread)
        expected = {"generate", "evaluate"} if g["generation"] == 0 else set(DRIVER_STAGES)
        assert set(m["stages"]) == expected
        wall = m["wall_seconds"]
        assert g["wall_seconds"] == wall
        stage_walls = sum(s["wall_seconds"] for s in m["stages"].values())
        assert stage_walls <= wall + 1e-9
        assert g["timing"] == pytest.approx({name: s["wall_seconds"] for name, s in m["stages"].items()})
        if g["generation"] >= 1:
            # the write of S_{t-1} ran beside this generation, off its critical path
            assert m["background_seconds"]["checkpoint"] > 0
        # checks independent of the definitions (overhead = wall - critical path is one, not a check):
        # the critical path fits in the time that passed, stage by stage and in all
        assert m["critical_path_seconds"] <= wall + 1e-9
        for s in m["stages"].values():
            assert s["critical_seconds"] <= s["wall_seconds"] + 1e-9
        # generate waits for its busiest generator, which was busy at least the generators' mean
        generate = m["stages"]["generate"]
        assert generate["actor_busy_seconds"] > 0
        assert generate["critical_seconds"] >= generate["actor_busy_seconds"] / config.generators - 1e-6
        # what the actors' own CPU clocks say they used in this generation is counted
        actors_cpu = sum(s["actor_cpu_seconds"] for s in m["stages"].values())
        assert m["cpu_seconds"] >= actors_cpu - 1e-6
        assert m["samples"] == g["samples"]
        assert m["gpu_allocated_seconds"] == 0.0 and m["gpu_hours"] == 0.0  # CPU actors hold no GPU
        if g["generation"] >= 1:
            assert m["stages"]["vote"]["actor_busy_seconds"] > 0
            assert {"generate", "embed", "vote", "release", "select", "checkpoint"} <= set(m["critical_seconds_by_kind"])

    cost = report["cost"]
    assert cost == run_cost(generations)
    metered = [g["metering"] for g in generations]
    assert cost["wall_seconds"] == pytest.approx(sum(m["wall_seconds"] for m in metered))
    assert cost["samples"] == sum(g["samples"] for g in generations)
    assert cost["cpu_hours"] == pytest.approx(sum(m["cpu_seconds"] for m in metered) / 3600)
    assert cost["cpu_hours"] > 0
    # the actors' own counters over the whole run (start-up and the final set included) against the
    # CPU-hours: every metered generation's actor CPU is in them, and no more than the actors report
    actors = report["timing"]["cpu_seconds"]
    metered_actor_cpu = sum(s["actor_cpu_seconds"] for m in metered for s in m["stages"].values())
    assert metered_actor_cpu <= actors["generators"] + actors["voters"] + 1e-6
    assert cost["cpu_hours"] * 3600 >= metered_actor_cpu - 1e-6
    assert sum(cost["stage_shares"].values()) == pytest.approx(1.0)
    assert report["timing"]["gpu_hours"] == cost["gpu_hours"] == 0.0
    cpu = report["timing"]["cpu_seconds"]
    assert cpu["generators"] > 0 and cpu["voters"] > 0
    assert (tmp_path / "run" / "cost.png").stat().st_size > 1000
    assert "cost.png" in report["outputs"]["plots"]
    assert result.report["cost"]["overhead_seconds"] == pytest.approx(cost["overhead_seconds"])
