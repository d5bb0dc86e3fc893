"""Submitting privevo jobs to a Ray cluster: local checks, the entrypoint, the report in the log,
and (slow) real submissions to a Ray head started for the test, with and without token auth."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from privevo.pipelines import submit as jobs
from privevo.pipelines.cli import main
from privevo.pipelines.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["generations=2", "population.per_class=30", "population.final_per_class=40"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_address() -> str:
    """A job-server address where nothing listens."""
    return f"http://127.0.0.1:{_free_port()}"


# --------------------------------------------------------------------------- refused before submitting


@pytest.mark.parametrize("override, field", [
    ("privacy.epsilon=-1", "privacy.epsilon"),          # schema
    ("vote.k=500", "vote.k"),                           # check_config: k > population.per_class
    ("privacy.delta=0.01", "privacy.delta"),            # check_config: delta not below 1/n
    ("variation.degree_end=0.9", "variation.degree_end"),  # check_config: end above start
])
def test_bad_synthesize_config_is_refused_before_any_connection(dead_address, override, field):
    with pytest.raises(ConfigError) as info:
        jobs.submit(ROOT / "configs/digits.yaml", dead_address, overrides=[override])
    assert info.value.field.startswith(field)
    assert info.value.source.endswith("digits.yaml")


def test_without_the_local_check_the_same_config_reaches_the_connection(dead_address):
    # The refusal above comes from the local check, not from the missing server.
    with pytest.raises(jobs.SubmitError, match="cannot reach"):
        jobs.submit(ROOT / "configs/digits.yaml", dead_address, overrides=["vote.k=500"], check_locally=False)


def test_bad_audit_config_is_refused(dead_address):
    with pytest.raises(ConfigError) as info:
        jobs.submit(ROOT / "configs/audit-digits.yaml", dead_address, job="audit", overrides=["runs=5"])
    assert info.value.field == "runs"
    with pytest.raises(ConfigError) as info:  # a PE paradigm's own synthesize config is checked too
        jobs.submit(ROOT / "configs/audit-digits.yaml", dead_address, job="audit",
                    overrides=["paradigms=[{kind: pe, epsilon: 1, synthesize_overrides: {vote: {k: 0}}}]"])
    assert info.value.field == "paradigms.0.synthesize_overrides.vote.k"


def test_cli_names_file_and_field_and_exits_2(dead_address, capsys):
    code = main(["submit", str(ROOT / "configs/digits.yaml"), "--address", dead_address,
                 "--set", "privacy.epsilon=-1", "--wait"])
    err = capsys.readouterr().err
    assert code == 2
    assert "digits.yaml: privacy.epsilon:" in err and "connect" not in err


def test_config_outside_the_working_dir_is_refused(tmp_path, dead_address):
    config = tmp_path / "run.yaml"
    shutil.copy(ROOT / "configs/digits.yaml", config)
    with pytest.raises(ConfigError, match="working_dir"):
        jobs.submit(config, dead_address, runtime_env={"working_dir": str(ROOT)})


def test_runtime_env_may_not_set_auth_variables(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump({"working_dir": ".", "env_vars": {"RAY_AUTH_MODE": "disabled"}}))
    with pytest.raises(ConfigError) as info:
        jobs.load_runtime_env(path)
    assert info.value.field == "env_vars"


def test_runtime_env_file_matches_the_default():
    assert jobs.load_runtime_env(ROOT / "cluster/runtime_env.yaml") == jobs.DEFAULT_RUNTIME_ENV


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(ConfigError) as info:
        jobs.resolve_address(None)
    assert info.value.field == "--address"
    monkeypatch.setenv("RAY_ADDRESS", "http://b:8265")
    assert jobs.resolve_address(None) == "http://b:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://a:8265")
    assert jobs.resolve_address(None) == "http://a:8265"
    assert jobs.resolve_address("http://flag:8265") == "http://flag:8265"


# --------------------------------------------------------------------------- the entrypoint


def test_entrypoint_quotes_every_argument_for_the_shell():
    nasty = ["name=a b; rm -rf /", "seed=$(id)", "name=`whoami`", "name='q\"", "name=x\ny"]
    line = jobs.entrypoint("synthesize", "configs/my run.yaml", nasty, "/tmp/o ut", launcher=["printf", "%s\\n"])
    expected = ["synthesize", "configs/my run.yaml"]
    for item in nasty:
        expected += ["--set", item]
    expected += ["--out", "/tmp/o ut", "--quiet", "--print-report"]
    assert shlex.split(line) == ["printf", "%s\\n", *expected]
    # And a real shell hands the job exactly these arguments, nothing executed.
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, check=True).stdout
    assert out == "".join(f"{arg}\n" for arg in expected)


def test_the_job_refuses_a_node_whose_privevo_is_not_the_submitters_code(tmp_path, capsys):
    """The working_dir upload carries configs; the code is the privevo installed on the nodes. A job
    submitted from other code stops before reading any config, naming the field."""
    line = jobs.entrypoint("synthesize", "configs/digits.yaml", code=jobs.code_digest())
    argv = shlex.split(line)
    assert argv[argv.index("--expect-code") + 1] == jobs.code_digest()
    from privevo.pipelines.cli import main

    assert main(["synthesize", "configs/digits.yaml", "--expect-code", "0" * 16, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--expect-code" in err and jobs.code_digest() in err and "0" * 16 in err
    assert not (tmp_path / "r").exists()


def test_the_code_digest_follows_every_code_file(tmp_path):
    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "privevo"
    for sub in ("pipelines", "actors"):
        shutil.copytree(root / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "__init__.py", copy / "__init__.py")
    assert jobs.code_digest(copy) == jobs.code_digest()  # the imported package is this checkout
    (copy / "actors" / "knn.py").write_text((copy / "actors" / "knn.py").read_text() + "\n# edited\n")
    assert jobs.code_digest(copy) != jobs.code_digest()


def test_audit_entrypoint_and_bad_job():
    assert shlex.split(jobs.entrypoint("audit", "configs/a.yaml")) == [
        "privevo", "audit", "configs/a.yaml", "--print-report"]
    with pytest.raises(ConfigError):
        jobs.entrypoint("train", "configs/a.yaml")


# --------------------------------------------------------------------------- the report in the log


REPORT = {"privacy": {"epsilon": 0.99, "delta": 1e-5, "noise": float("nan")},
          "generations": [{"generation": 0}, {"generation": 1, "text": "=== privevo report.json end"}],
          "name": "caf\u00e9 \"quoted\"\nline"}


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-aware comparison


def test_report_round_trips_through_a_noisy_log():
    log = ("starting\n(GeneratorWorker pid=1) hello\n" + jobs.format_report({"old": 1})
           + "more output\n" + jobs.format_report(REPORT).replace("\n{", "\n(pid=7) interleaved\n{", 1)
           + "(pid=8) after\n")
    assert _same(jobs.parse_report(log), REPORT)  # the last report, the interleaved line skipped


def test_truncated_or_damaged_logs_are_refused():
    text = "output\n" + jobs.format_report(REPORT)
    end = text.rindex("=== privevo report.json end")
    for cut in (text[:end], text[: end - 10], text[: text.index("{") + 20]):
        with pytest.raises(jobs.ReportNotFound, match="truncated"):
            jobs.parse_report(cut)
    with pytest.raises(jobs.ReportNotFound, match="checksum"):
        jobs.parse_report(text.replace('"epsilon":0.99', '"epsilon":0.01'))
    with pytest.raises(jobs.ReportNotFound, match="no report"):
        jobs.parse_report("the job failed before printing anything\n")


# --------------------------------------------------------------------------- authentication headers


def test_auth_headers_follow_rays_token_sources(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert jobs.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray/auth_token").write_text("from-default-file\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-default-file"}
    token_file = tmp_path / "token"
    token_file.write_text("from-path\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert jobs.auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")      # Ray's client attaches it itself
    assert jobs.auth_headers() == {}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token_file.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        jobs.auth_headers()


# --------------------------------------------------------------------------- the cluster definitions


def test_launcher_config_is_valid_and_keeps_auth_on():
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((ROOT / "cluster/aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    gpu_types = [t for t in config["available_node_types"].values() if "gpu" in str(t.get("worker_setup_commands"))]
    assert gpu_types and all(t["max_workers"] > t["min_workers"] for t in gpu_types)
    assert any("[models,gpu]" in cmd for t in gpu_types for cmd in t["worker_setup_commands"])


def test_rayjob_manifest_takes_its_token_from_a_secret():
    manifest = yaml.safe_load((ROOT / "cluster/kuberay-rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["privevo", "synthesize"] and (ROOT / argv[2]).is_file()
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert not any(k.startswith("RAY_AUTH") for k in runtime_env.get("env_vars", {}))
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], spec["submitterPodTemplate"],
            *[g["template"] for g in cluster["workerGroupSpecs"]]]
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"] and "value" not in env["RAY_AUTH_TOKEN"]
    gpu = [g for g in cluster["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in gpu)


# --------------------------------------------------------------------------- a real Ray head


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
            pids.append(int(entry))
    return pids


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


@contextlib.contextmanager
def ray_head(env: dict[str, str]):
    """A Ray head of its own (own ports, own short temp dir, own session); yields its job-server URL.

    Stopped by signalling only its own processes (its session, and anything naming its temp
    dir): never `ray stop`, which would stop every Ray on the machine.
    """
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to stop the test's own Ray processes")
    tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: unix socket paths are limited
    ports = {name: _free_port() for name in (
        "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port",
        "node-manager-port", "object-manager-port")}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    command = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={tmp}", "--include-dashboard=true",
               *[f"--{name}={port}" for name, port in ports.items()]]
    with open(Path(tmp) / "head.log", "w") as log:
        proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # 401 with auth on: the server is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the test's Ray head did not start:\n" + (Path(tmp) / "head.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        for pid in set(_session_pids(proc.pid)) | set(_pids_mentioning(tmp)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def privevo(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the privevo CLI as a user would, from the project root (``unset``: variables to drop)."""
    full = {k: v for k, v in os.environ.items() if k not in unset}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "privevo.pipelines.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full, check=False)


LAUNCHER = f"{shlex.quote(sys.executable)} -m pipelines.cli"  # the job runs on this machine, in this venv


def _job_id(stdout: str) -> str:
    return next(line.split()[-1] for line in stdout.splitlines() if line.startswith("submitted job"))


@pytest.mark.slow
def test_submit_wait_report_status_logs_end_to_end(tmp_path):
    t0 = time.perf_counter()
    with ray_head({"RAY_AUTH_MODE": "disabled"}) as address:
        report_path = tmp_path / "fetched" / "report.json"
        run = privevo("submit", "configs/digits.yaml", "--address", address, *[a for s in SMALL for a in ("--set", s)],
                      "--out", str(tmp_path / "run"), "--launcher", LAUNCHER, "--wait", "--report-to", str(report_path))
        assert run.returncode == 0, run.stdout + run.stderr
        job_id = _job_id(run.stdout)
        assert f"job {job_id}: SUCCEEDED" in run.stdout

        report = json.loads(report_path.read_text())
        assert report["privacy"]["target_epsilon"] == 1.0 and report["privacy"]["delta"] == 1e-5
        assert report["privacy"]["epsilon"] <= 1.0 and report["privacy"]["releases"] == 2
        assert [g["generation"] for g in report["generations"]] == [0, 1, 2]
        # The job wrote its report on the "cluster's" disk; the fetched one is the same.
        assert report == json.loads((tmp_path / "run" / "report.json").read_text())

        status = privevo("status", job_id, "--address", address)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout
        logs = privevo("logs", job_id, "--address", address, "--follow")
        assert logs.returncode == 0 and "=== privevo report.json begin" in logs.stdout
        assert "run directory" in logs.stdout

        # A job that fails on the cluster (its config checked there only): status FAILED, exit 1,
        # no report written.
        bad = privevo("submit", "configs/digits.yaml", "--address", address, "--set", "generations=0",
                      "--no-local-check", "--out", str(tmp_path / "bad"), "--launcher", LAUNCHER,
                      "--report-to", str(tmp_path / "bad.json"))
        assert bad.returncode == 1 and "FAILED" in bad.stdout and "generations" in bad.stdout
        assert not (tmp_path / "bad.json").exists()
        status = privevo("status", _job_id(bad.stdout), "--address", address)
        assert status.returncode == 1 and "FAILED" in status.stdout
    print(f"\nend-to-end submit test: {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
def test_token_auth_refuses_unauthenticated_clients(tmp_path, monkeypatch):
    token = secrets.token_hex(32)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    home = tmp_path / "home"  # no ~/.ray/auth_token of the machine's user can leak in
    home.mkdir()
    with ray_head({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}) as address:
        tiny = ["generations=1", "generators=1", "population.per_class=20", "population.final_per_class=20",
                "evaluation.every_generation=false"]
        args = ["submit", "configs/digits.yaml", "--address", address, *[a for s in tiny for a in ("--set", s)],
                "--launcher", LAUNCHER]
        unset = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
        home_env = {"HOME": str(home)}
        no_token = privevo(*args, "--out", str(tmp_path / "a"), unset=unset,
                           env={**home_env, "RAY_AUTH_MODE": "disabled"})
        assert no_token.returncode == 1 and "Unauthorized" in no_token.stderr, no_token.stderr
        wrong = privevo(*args, "--out", str(tmp_path / "b"), unset=unset,
                        env={**home_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"})
        assert wrong.returncode == 1 and "Forbidden" in wrong.stderr, wrong.stderr

        ok = privevo(*args, "--out", str(tmp_path / "c"), "--wait", "--report-to", str(tmp_path / "r.json"),
                     unset=unset, env={**home_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert ok.returncode == 0 and "SUCCEEDED" in ok.stdout, ok.stdout + ok.stderr
        assert json.loads((tmp_path / "r.json").read_text())["privacy"]["releases"] == 1
        # RAY_AUTH_MODE unset: privevo finds the token through RAY_AUTH_TOKEN_PATH and sends it itself.
        status = privevo("status", _job_id(ok.stdout), "--address", address, unset=(*unset, "RAY_AUTH_MODE"),
                         env={**home_env, "RAY_AUTH_TOKEN_PATH": str(token_file)})
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stderr
        for result in (no_token, wrong, ok, status):
            assert token not in result.stdout + result.stderr

        # The refused submissions never reached the job list.
        from ray.job_submission import JobSubmissionClient

        monkeypatch.delenv("RAY_ADDRESS", raising=False)  # it would override the address given
        monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
        assert len(client.list_jobs()) == 1
