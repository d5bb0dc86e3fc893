"""Synthesize runs on a three-node Ray cluster on this machine, with faults injected.

    python tests/fault_cluster.py OUT SCENARIO [SCENARIO ...]

Run by tests/test_faults.py in a child process: a process can join only one Ray
instance, and the pytest session may already hold a local one. The cluster is a
head with no CPUs (it runs only the driver, as on a real cluster) and two worker
nodes of 1 CPU each; the actors take a quarter CPU each. Scenarios, in order:

- ``reference``: an undisturbed run;
- ``unplaceable``: a plan asking for a GPU per generator on this CPU-only cluster;
- ``unspreadable``: ``strict_spread`` over more actors than there are nodes;
- ``kill_generator``: in generation 2, once both generator actors are running
  variation shards, one is killed (``ray.kill(no_restart=False)``);
- ``remove_node``: placement ``spread``; in generation 2, once both generators
  are running variation shards, the worker node holding the voter shard (and a
  generator) is removed from the cluster (so it comes last).

Each scenario writes OUT/<scenario>.json (``ok``, ``error`` and what was
observed); its run directory is OUT/<scenario>. The generator and voter actors are test subclasses that leave a
marker file per constructor call and per variation shard (the shards also sleep a
little, so that a fault lands while work is in flight); they compute exactly what
the real actors do.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import privevo.actors.generators.worker as worker_module  # noqa: E402
import privevo.actors.voter as voter_module  # noqa: E402
from privevo.actors.generators.worker import GeneratorWorker  # noqa: E402
from privevo.actors.voter import VoterShard  # noqa: E402

NOISE_SEED = 1234
SHARD_DELAY_S = 0.4
MARKERS = ""  # set in main(); captured by value with the classes below


def _mark(kind: str) -> None:
    import ray

    context = ray.get_runtime_context()
    name = f"{kind}.{context.get_actor_id()}.{context.get_node_id()}.{uuid.uuid4().hex}"
    (Path(MARKERS) / name).touch()


class MarkedGenerator(GeneratorWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _mark("init-generator")

    def variation(self, parents, degree, seed):
        _mark("variation")
        time.sleep(SHARD_DELAY_S)
        return super().variation(parents, degree, seed)


class MarkedVoter(VoterShard):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # loads and embeds the shard's private data
        _mark("init-voter")


def markers(kind: str) -> list[tuple[str, str, str]]:
    """(file name, actor id, node id) of each marker of ``kind``."""
    out = []
    for p in Path(MARKERS).iterdir():
        if p.name.startswith(kind + "."):
            _, actor, node, _ = p.name.split(".")
            out.append((p.name, actor, node))
    return out


def clear_markers() -> None:
    for p in Path(MARKERS).iterdir():
        p.unlink()


def config(**overrides):
    from conftest import small_config

    return small_config(**{"data.labels": "[0, 1, 2]", **overrides})


def when_generators_busy(n_generators: int, action, timeout: float = 60.0) -> threading.Thread:
    """Run ``action`` in a thread once every generator has started a variation shard from now on."""
    before = {name for name, _, _ in markers("variation")}

    def wait_then_act() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = {actor for name, actor, _ in markers("variation") if name not in before}
            if len(busy) >= n_generators:
                action()
                return
            time.sleep(0.02)
        raise TimeoutError("the generators never got busy")

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def run_synthesis(cfg, run_dir: Path, fault=None) -> dict:
    """Run ``cfg``; ``fault(actors, generation)`` is called after each release."""
    from privevo.pipelines.evolution import synthesize
    from privevo.pipelines.hooks import RunObserver

    threads: list[threading.Thread] = []

    class Inject(RunObserver):
        def engine_started(self, engine):
            self.engine = engine

        def released(self, generation: int) -> None:
            if fault is not None:
                thread = fault(self.engine, generation)
                if thread is not None:
                    threads.append(thread)

    clear_markers()
    t0 = time.perf_counter()
    result = synthesize(cfg, run_dir, insecure_noise_seed=NOISE_SEED, observer=Inject())
    for thread in threads:
        thread.join(timeout=5)
    return {
        "seconds": time.perf_counter() - t0,
        "epsilon": result.report["privacy"]["epsilon"],
        "generator_inits": len(markers("init-generator")),
        "voter_inits": [(actor, node) for _, actor, node in markers("init-voter")],
        "variation_shards": len(markers("variation")),
        "generators": cfg.generators,
    }


def scenario_reference(out: Path, cluster) -> dict:
    return run_synthesis(config(), out / "reference")


def scenario_kill_generator(out: Path, cluster) -> dict:
    import ray

    def fault(actors, generation):
        if generation == 2:
            victim = actors.generators[0]
            return when_generators_busy(len(actors.generators), lambda: ray.kill(victim, no_restart=False))
        return None

    return run_synthesis(config(), out / "kill_generator", fault)


def scenario_remove_node(out: Path, cluster) -> dict:
    from ray.util.placement_group import placement_group_table

    observed: dict = {}

    def fault(actors, generation):
        if generation != 2:
            return None
        table = placement_group_table(actors.placement_group)["bundles_to_node_id"]
        voter_node = table[len(actors.generators)]
        observed["bundle_nodes"] = [table[i] for i in sorted(table)]
        observed["removed_node"] = voter_node
        node = next(n for n in cluster.worker_nodes if n.node_id == voter_node)
        return when_generators_busy(len(actors.generators), lambda: cluster.remove_node(node))

    result = run_synthesis(config(**{"resources.placement": "spread"}), out / "remove_node", fault)
    return {**result, **observed}


def _refused(cfg, run_dir: Path) -> dict:
    import ray
    from ray.util.placement_group import placement_group_table

    from privevo.pipelines.config import ConfigError
    from privevo.pipelines.evolution import synthesize

    t0 = time.perf_counter()
    try:
        synthesize(cfg, run_dir, insecure_noise_seed=NOISE_SEED)
    except ConfigError as exc:
        states = [pg["state"] for pg in placement_group_table().values()]
        return {"field": exc.field, "message": str(exc), "seconds": time.perf_counter() - t0,
                "run_dir_exists": run_dir.exists(), "placement_group_states": states,
                "available": ray.available_resources()}
    raise AssertionError("the run was not refused")


def scenario_unplaceable(out: Path, cluster) -> dict:
    return _refused(config(**{"resources.generator_gpus": 1, "resources.placement_timeout_s": 3}),
                    out / "unplaceable")


def scenario_unspreadable(out: Path, cluster) -> dict:
    return _refused(config(**{"resources.placement": "strict_spread", "resources.placement_timeout_s": 3}),
                    out / "unspreadable")


def main(argv: list[str]) -> int:
    global MARKERS
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    MARKERS = str(out / "markers")
    Path(MARKERS).mkdir(exist_ok=True)
    worker_module.GeneratorWorker = MarkedGenerator
    voter_module.VoterShard = MarkedVoter

    # The cluster writes its address where a plain ray.init() on this machine looks for
    # "the latest cluster"; a private temp dir keeps other processes from joining it.
    ray_tmp = tempfile.mkdtemp(prefix="pvf")
    os.environ["RAY_TMPDIR"] = ray_tmp

    import ray
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # As on a real cluster: the driver joins it, and the local-capacity check is off.
        os.environ["RAY_ADDRESS"] = cluster.address
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        (out / "cluster.json").write_text(json.dumps({"start_seconds": time.perf_counter() - t0}))
        for name in argv[1:]:
            try:
                result = {"ok": True, **globals()[f"scenario_{name}"](out, cluster)}
            except Exception:
                nodes = [{k: n[k] for k in ("NodeID", "Alive", "Resources")} for n in ray.nodes()]
                result = {"ok": False, "error": traceback.format_exc(), "nodes": nodes,
                          "available": ray.available_resources()}
            (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        ray.shutdown()
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
