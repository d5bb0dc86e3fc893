"""The demo through the real command line: a full run, and a run killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privevo.pipelines.privacy import PrivacyLedger

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "digits.yaml"


def privevo(*args, **kwargs):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-m", "privevo.pipelines.cli", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    proc = privevo("synthesize", str(DEMO), "--out", str(run_dir), "--quiet")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return run_dir, out


def test_demo_runs_end_to_end(demo_run):
    run_dir, out = demo_run
    report = json.loads((run_dir / "report.json").read_text())
    for line in ("privacy", "accuracy", "wall time", "generations"):
        assert line in out
    assert report["privacy"]["epsilon"] <= report["privacy"]["target_epsilon"] * (1 + 1e-6)
    assert report["privacy"]["noise_source"] == "opendp-discrete-gaussian"
    assert report["privacy"]["releases"] == len(PrivacyLedger(run_dir).records())
    evaluation = report["evaluation"]
    # DP synthetic data must beat the prior alone, which used no private data
    assert evaluation["accuracy"] > evaluation["baselines"]["generation0"]["accuracy"]
    assert evaluation["frechet_distance"] < evaluation["baselines"]["generation0"]["frechet_distance"]
    for name in ("synthetic.parquet", "ledger.jsonl", "samples.png", "progress.png", "config.yaml"):
        assert (run_dir / name).exists()


def test_killed_run_resumes_to_exactly_T_releases(demo_run, tmp_path):
    reference = json.loads((demo_run[0] / "report.json").read_text())
    run_dir = tmp_path / "run"
    proc = privevo("synthesize", str(DEMO), "--out", str(run_dir), "--quiet")
    ledger = run_dir / "ledger.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    killed_at = len(PrivacyLedger(run_dir).generations())
    assert killed_at < reference["privacy"]["releases"]
    drawn = {t: PrivacyLedger(run_dir).load_release(t) for t in PrivacyLedger(run_dir).generations()}
    assert not (run_dir / "report.json").exists()

    resumed = privevo("synthesize", str(DEMO), "--resume", str(run_dir), "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    ledger = PrivacyLedger(run_dir)
    assert ledger.generations() == list(range(1, reference["privacy"]["releases"] + 1))
    for t, release in drawn.items():  # noise from a secure source: a release drawn again would differ
        assert (ledger.load_release(t) == release).all(), f"release {t} was drawn again"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["privacy"]["epsilon"] == reference["privacy"]["epsilon"]
    assert report["privacy"]["releases"] == reference["privacy"]["releases"]


def test_the_local_instance_starts_with_token_auth_and_no_warning(tmp_path):
    """With RAY_AUTH_MODE unset (a user's shell), privevo decides the mode itself: token
    authentication, said explicitly, so the run works and Ray prints no warning about it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "privevo.pipelines.cli", "synthesize", str(DEMO), "--set", "generations=1",
         "--out", str(tmp_path / "run"), "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Token authentication" not in proc.stderr
    assert (tmp_path / "run" / "report.json").exists()
