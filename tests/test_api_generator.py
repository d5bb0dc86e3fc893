"""The ``api`` generator: Aug-PE prompts through the real ``openai`` client against an
OpenAI-compatible server on loopback (tests/openai_server.py): retries, timeouts, failover,
recorded responses and resume, token metering, and the key kept out of everything."""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from openai_server import EchoModel, OpenAIServer, TinyTransformersModel

from conftest import small_config
from privevo.actors.generators.api import APIGenerator, APIGeneratorError, Options
from privevo.actors.generators.base import GeneratorContext, SampleBatch
from privevo.actors.generators.llm import derive_seed
from privevo.actors.generators.worker import GeneratorWorker
from privevo.pipelines.config import ConfigError
from privevo.pipelines.evolution import rebuild, synthesize
from privevo.pipelines.hooks import RunObserver

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")

ENV = "PRIVEVO_TEST_API_KEY"
KEY = "sk-privevo-test-9f3c51d0e7a24b68"
CLASSES = {0: "negative", 1: "positive"}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)


@pytest.fixture
def server():
    srv = OpenAIServer(EchoModel("a"), key=KEY)
    yield srv
    srv.stop()


def context(record_dir=None) -> GeneratorContext:
    return GeneratorContext(modality="text", sample_shape=(), max_value=0.0, labels=(0, 1), class_names=CLASSES,
                            record_dir=None if record_dir is None else str(record_dir))


def options(*urls: str, **overrides) -> dict:
    return {"endpoints": list(urls), "model": "tiny", "api_key_env": ENV, "target_words": 8, "backoff_s": 0.01,
            "timeout_s": 5.0, **overrides}


def make(*urls: str, record_dir=None, **overrides) -> APIGenerator:
    return APIGenerator(Options(**options(*urls, **overrides)), context(record_dir))


def parents(n: int = 4) -> SampleBatch:
    texts = [f"the soup was {w} and the staff were kind to us" for w in ("cold", "hot", "fine", "bland")]
    return SampleBatch(labels=np.arange(n) % 2, samples=np.array((texts * n)[:n], dtype=object))


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    srv = OpenAIServer()
    srv.stop()
    return srv.url


# --------------------------------------------------------------------------- options


def reviews_csv(path: Path) -> str:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "sentiment"])
        for i in range(8):
            writer.writerow([f"the food was great and the staff were friendly ({i})", "positive"])
            writer.writerow([f"lovely place with tasty dishes, we come back ({i})", "positive"])
            writer.writerow([f"cold food and a rude waiter, never again ({i})", "negative"])
            writer.writerow([f"terrible service, we waited an hour ({i})", "negative"])
    return str(path)


def text_config(csv_path: str, generator: dict, **overrides):
    return small_config(**{
        "generations": 2, "generators": 2, "privacy.epsilon": 4.0, "privacy.delta": 1e-3,
        "data.kind": "text_table", "data.path": csv_path, "data.label_column": "sentiment",
        "data.class_names": "[negative, positive]", "data.heldout": "split", "data.heldout_fraction": 0.25,
        "population.per_class": 6, "population.final_per_class": 8, "population.shard_size": 4,
        "vote.k": 1, "generator.kind": "api", "generator.options": json.dumps(generator),
        "embedder.kind": "sentence_transformer", "evaluation.classifier": "logreg",
        "evaluation.features": "embedding", "resources.engine": "in_process", **overrides,
    })


def test_bad_configs_are_refused_naming_the_field_before_any_run(tmp_path, monkeypatch):
    csv_path = reviews_csv(tmp_path / "reviews.csv")
    url = "http://127.0.0.1:9/v1"
    cases = [
        ({"api_key_env": "PRIVEVO_NO_SUCH_VARIABLE"}, "generator.options.api_key_env", "PRIVEVO_NO_SUCH_VARIABLE"),
        ({"endpoints": ["localhost:8000"]}, "generator.options.endpoints", "http"),
        ({"endpoints": []}, "generator.options.endpoints", ""),
        ({"max_concurent": 4}, "generator.options.max_concurent", "unknown field"),
        ({"prices": {"gpt-x": {"input": 1.0, "output": 2.0}}}, "generator.options.prices", "tiny"),
        ({"random_prompt": "Write a {label} review"}, "generator.options.random_prompt", "unknown placeholder"),
        ({"variation": "rephrase"}, "generator.options.variation", ""),
        ({"api": "completions", "system_prompt": "Be terse."}, "generator.options.system_prompt", "chat"),
    ]
    for i, (change, field, words) in enumerate(cases):
        with pytest.raises(ConfigError) as info:
            synthesize(text_config(csv_path, options(url, **change)), tmp_path / f"run{i}")
        assert info.value.field == field, (change, str(info.value))
        assert words in str(info.value)
        assert not (tmp_path / f"run{i}").exists()
    # the key pasted where its variable's name belongs is refused without being echoed
    with pytest.raises(ConfigError) as info:
        synthesize(text_config(csv_path, options(url, api_key_env=KEY)), tmp_path / "pasted")
    assert info.value.field == "generator.options.api_key_env" and KEY not in str(info.value)
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match=ENV) as info:
        synthesize(text_config(csv_path, options(url)), tmp_path / "unset")
    assert info.value.field == "generator.options.api_key_env"


def test_validating_options_imports_no_client(tmp_path):
    import subprocess
    import sys

    code = ("import sys\n"
            "from privevo.actors.generators.worker import validate_generator_options\n"
            f"validate_generator_options('api', {{'endpoints': ['http://h:1/v1'], 'model': 'm', 'api_key_env': None}})\n"
            "assert 'openai' not in sys.modules and 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- requests


def test_aug_pe_prompts_and_request_fields_reach_the_server(server):
    gen = make(server.url, temperature=0.7, top_p=0.9, max_tokens=12)
    batch = gen.random(np.array([0, 1, 1]), seed=5)
    assert all(isinstance(s, str) and s.startswith("a:") for s in batch.samples)
    assert [entry["path"] for entry in server.log] == ["/v1/chat/completions"] * 3
    assert {entry["authorization"] for entry in server.log} == {f"Bearer {KEY}"}
    bodies = sorted((entry["body"] for entry in server.log), key=lambda b: b["seed"])
    assert sorted(b["seed"] for b in bodies) == sorted(derive_seed(5, 0, row) for row in range(3))
    for body in bodies:
        assert (body["model"], body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == ("tiny", 1, 0.7, 0.9, 12)
    assert sorted(b["messages"][0]["content"] for b in bodies) == sorted(
        gen.random_prompt(label) for label in (0, 1, 1))  # the llm kind's prompt building
    assert gen.random_prompt(1) == "Write a positive review of about 8 words."

    server.reset_counts()
    gen.variation(parents(4), np.array([0.0, 0.5, 1.0, 0.5]), seed=6)
    masked = sorted(entry["body"]["messages"][0]["content"].rsplit("\n", 1)[1].split().count("_")
                    for entry in server.log)
    assert masked == [0, 6, 6, 11]  # round(degree * 11 words): the llm kind's fill-in masking

    completions = make(server.url, api="completions", variation="paraphrase")
    server.reset_counts()
    out = completions.variation(parents(2), 0.5, seed=1)
    assert [entry["path"] for entry in server.log] == ["/v1/completions"] * 2
    assert all(entry["body"]["prompt"].startswith("Rewrite this") for entry in server.log)
    assert list(out.params["kind"]) == ["paraphrase"] * 2
    chat = make(server.url, system_prompt="You write restaurant reviews.")
    chat.random(np.array([0]), seed=1)
    assert server.log[-1]["body"]["messages"][0] == {"role": "system", "content": "You write restaurant reviews."}


def test_429_with_retry_after_and_5xx_are_retried_to_the_same_texts(server):
    expected = list(make(server.url).random(np.array([0, 1]), seed=3).samples)
    server.reset_counts()
    server.fail_next(1, 429, retry_after="1")
    server.fail_next(1, 503)
    gen = make(server.url, max_concurrency=1)
    started = time.perf_counter()
    got = list(gen.random(np.array([0, 1]), seed=3).samples)
    assert got == expected
    assert time.perf_counter() - started >= 1.0  # Retry-After: 1 honoured (backoff alone is ~0.01 s)
    usage = gen.usage()
    assert usage["api_requests"] == server.requests == 4 and usage["api_retries"] == 2
    assert server.answered == 2


def test_a_timeout_is_retried(server):
    server.delay_next(1, 1.5)
    gen = make(server.url, timeout_s=0.3, max_concurrency=1, endpoint_cooldown_s=0.0)
    batch = gen.random(np.array([0, 1]), seed=4)
    assert all(s.startswith("a:") for s in batch.samples)
    assert gen.usage()["api_retries"] == 1


def test_spent_retries_and_refused_keys_fail_cleanly_without_the_key(server):
    server.fail_next(20, 503)
    gen = make(server.url, max_retries=2, max_concurrency=1)
    with pytest.raises(APIGeneratorError, match="max_retries: 3 attempts") as info:
        gen.random(np.array([0]), seed=1)
    assert "HTTP 503" in str(info.value) and KEY not in str(info.value)
    refusing = OpenAIServer(EchoModel("a"), key="another-key")
    try:
        with pytest.raises(APIGeneratorError, match="api_key_env") as info:
            make(refusing.url).random(np.array([0]), seed=1)
        assert ENV in str(info.value) and KEY not in str(info.value)
        assert refusing.requests == 1  # a refused key is not retried
    finally:
        refusing.stop()


def test_two_endpoints_one_dead_fail_over(server):
    gen = make(dead_url(), server.url, max_concurrency=2, max_retries=1)
    started = time.perf_counter()
    batch = gen.random(np.array([0, 1] * 5), seed=2)
    assert all(s.startswith("a:") for s in batch.samples)
    assert server.answered == 10
    assert gen.usage()["api_retries"] <= 2  # the dead one is skipped once it failed
    assert time.perf_counter() - started < 5


def test_live_endpoints_share_the_requests(server):
    other = OpenAIServer(EchoModel("a"), key=KEY)
    try:
        gen = make(server.url, other.url, max_concurrency=1)
        gen.random(np.array([0, 1] * 5), seed=2)
        assert server.answered == other.answered == 5
    finally:
        other.stop()


# --------------------------------------------------------------------------- records and metering


def test_a_recorded_shard_is_replayed_not_asked_again(server, tmp_path):
    records = tmp_path / "records"
    first = make(server.url, record_dir=records).variation(parents(4), 0.5, seed=8)
    files = sorted(records.iterdir())
    assert len(files) == 1 and files[0].name.startswith("shard-8-")  # keyed by the shard's seed
    record = json.loads(files[0].read_text())
    assert record["responses"] and KEY not in files[0].read_text()
    server.model = EchoModel("b")  # the API now answers differently
    server.reset_counts()
    again = make(server.url, record_dir=records)
    assert list(again.variation(parents(4), 0.5, seed=8).samples) == list(first.samples)
    assert server.requests == 0 and again.usage()["api_replayed_shards"] == 1
    other = again.variation(parents(4), 0.5, seed=9)  # another seed: another shard, asked
    assert all(s.startswith("b:") for s in other.samples) and server.answered == 4
    assert not [p for p in records.iterdir() if p.name.startswith(".")]  # no temp file left
    files[0].write_text(json.dumps({**record, "responses": ["x"]}))
    with pytest.raises(APIGeneratorError, match=files[0].name):
        again.variation(parents(4), 0.5, seed=8)


def test_worker_meters_requests_tokens_and_money_as_the_server_saw_them(server):
    prices = {"tiny": {"input": 0.5, "output": 2.0}}
    worker = GeneratorWorker("api", options(server.url, prices=prices), context())
    worker.random(np.array([0, 1, 0]), seed=1)
    worker.variation(parents(4), 0.4, seed=2)
    usage = worker.stats()["usage"]
    assert usage["api_requests"] == server.requests == 7
    assert usage["api_input_tokens"] == server.prompt_tokens > 0
    assert usage["api_output_tokens"] == server.completion_tokens > 0
    assert usage["api_cost"] == pytest.approx((server.prompt_tokens * 0.5 + server.completion_tokens * 2.0) / 1e6)
    assert worker.stats()["usage"]["api_requests"] == 0  # counts since the last call


@pytest.mark.slow
def test_the_tiny_transformers_model_served_over_http(tmp_path):
    from tiny_llm import build_tiny_causal_lm

    srv = OpenAIServer(TinyTransformersModel(build_tiny_causal_lm(tmp_path / "lm")), key=KEY)
    try:
        for api in ("completions", "chat"):
            gen = make(srv.url, api=api, max_tokens=6, max_concurrency=2)
            batch = gen.random(np.array([0, 1, 1]), seed=11)
            var = gen.variation(batch, 0.5, seed=12)
            assert all(isinstance(s, str) and s.strip() for s in [*batch.samples, *var.samples])
            # the request seed reaches the server's sampler: the same shard, the same texts
            assert list(gen.random(np.array([0, 1, 1]), seed=11).samples) == list(batch.samples)
            usage = gen.usage()
            assert usage["api_input_tokens"] == srv.prompt_tokens and usage["api_output_tokens"] == srv.completion_tokens
            srv.reset_counts()
    finally:
        srv.stop()


# --------------------------------------------------------------------------- runs


class Crash(RunObserver):
    """A crash after release 1, before S_0's checkpoint landed (so the resume must remake S_0)."""

    def writing_checkpoint(self, generation: int) -> None:
        if generation == 0:
            raise RuntimeError("crash: S_0's checkpoint never lands")

    def released(self, generation: int) -> None:
        if generation == 1:
            raise RuntimeError("crash after release 1")


def synthetic_texts(run_dir: Path) -> list[tuple[int, str]]:
    table = pq.read_table(run_dir / "synthetic.parquet")
    return list(zip(table.column("label").to_pylist(), table.column("text").to_pylist()))


@pytest.mark.slow
def test_a_resumed_run_replays_its_recorded_responses(server, tmp_path):
    csv_path = reviews_csv(tmp_path / "reviews.csv")
    config = text_config(csv_path, options(server.url))
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash after release 1"):
        synthesize(config, run_dir, insecure_noise_seed=3, observer=Crash())
    assert not (run_dir / "checkpoint" / "state.json").exists()
    s0_requests = server.answered  # S_0: 2 classes x 6 texts
    assert s0_requests == 12 and len(list((run_dir / "generator-records").iterdir())) == 4

    server.model = EchoModel("b")  # the API now answers differently
    server.reset_counts()
    result = synthesize(config, run_dir, resume=True, insecure_noise_seed=3, keep_populations=True)
    s0 = pq.read_table(run_dir / "checkpoint" / "population-0.parquet").column("text").to_pylist()
    assert len(s0) == 12 and all(t.startswith("a:") for t in s0)  # S_0 as release 1 saw it: replayed
    assert result.report["cost"]["usage"]["api_replayed_shards"] >= 4
    assert server.answered > 0 and all(e["body"]["seed"] is not None for e in server.log)

    # an uninterrupted run from the same recorded releases and responses, the API down
    server.stop()
    rebuilt = rebuild(run_dir, tmp_path / "rebuilt")
    assert synthetic_texts(tmp_path / "rebuilt") == synthetic_texts(run_dir)
    assert len(synthetic_texts(run_dir)) == 16
    assert rebuilt.report["cost"]["usage"]["api_requests"] == 0


class Snapshot(RunObserver):
    """The server's counts after S_0 was made (at release 1) and when the generations are done
    (the baselines after them are not metered)."""

    def __init__(self, server: OpenAIServer) -> None:
        self.server, self.seen = server, {}

    def counts(self) -> np.ndarray:
        return np.array([self.server.requests, self.server.prompt_tokens, self.server.completion_tokens])

    def released(self, generation: int) -> None:
        self.seen.setdefault(f"release {generation}", self.counts())

    def finishing(self) -> None:
        self.seen["finishing"] = self.counts()


@pytest.mark.slow
def test_a_server_killed_mid_run_fails_cleanly_and_the_run_resumes(server, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    csv_path = reviews_csv(tmp_path / "reviews.csv")
    config = text_config(csv_path, options(server.url, max_retries=2, prices={"tiny": {"input": 1.0, "output": 4.0}}))
    run_dir = tmp_path / "run"
    server.stop_after(18)  # S_0 is 12 requests: killed while S_1 is made, after release 1
    first = Snapshot(server)
    with pytest.raises(APIGeneratorError, match="max_retries") as info:
        synthesize(config, run_dir, insecure_noise_seed=5, observer=first)
    assert KEY not in str(info.value)
    assert (run_dir / "ledger.jsonl").exists() and first.seen["release 1"][0] == 12

    server.start()  # back on the same port
    server.reset_counts()
    second = Snapshot(server)
    result = synthesize(config, run_dir, resume=True, insecure_noise_seed=5, observer=second)
    assert len(synthetic_texts(run_dir)) == 16
    # the report meters the finished generations: S_0 in the first attempt, the rest in the second
    # (the requests of the generation the crash cut short are lost with it)
    usage = result.report["cost"]["usage"]
    requests, tokens_in, tokens_out = first.seen["release 1"] + second.seen["finishing"]
    assert (usage["api_requests"], usage["api_input_tokens"], usage["api_output_tokens"]) == (requests, tokens_in, tokens_out)
    assert usage["api_cost"] == pytest.approx((tokens_in + 4 * tokens_out) / 1e6)
    per_generation = [g["metering"]["usage"]["api_requests"] for g in result.report["generations"]]
    assert per_generation[0] == 12 and sum(per_generation) == requests

    # the key is in no file of the run directory and in no log line
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert KEY not in caplog.text and KEY not in out and KEY not in err


def test_the_shipped_config_passes_every_check(tmp_path, monkeypatch):
    """configs/text-api.yaml, its data pointed at local stand-ins: the driver's checks pass, and
    refuse it, naming the field, while its key variable is unset."""
    import yaml

    from privevo.pipelines.checks import check_config, check_data
    from privevo.pipelines.config import parse_config

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "text-api.yaml").read_text())
    names = raw["data"]["class_names"]
    for key in ("path", "heldout_path"):
        path = tmp_path / f"{key}.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([raw["data"]["text_column"], raw["data"]["label_column"]])
            writer.writerows([(f"review {i}", names[i % len(names)]) for i in range(2000)])
        raw["data"][key] = str(path)
    variable = raw["generator"]["options"]["api_key_env"]
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match=variable) as info:
        check_config(parse_config(raw, "text-api.yaml"), "text-api.yaml")
    assert info.value.field == "generator.options.api_key_env"
    monkeypatch.setenv(variable, KEY)
    config = parse_config(raw, "text-api.yaml")
    plan, info, labels = check_config(config, "text-api.yaml")
    check_data(config, "text-api.yaml")
    assert info.modality == "text" and labels == tuple(range(len(names)))
    assert KEY not in json.dumps(config.model_dump(mode="json"))
