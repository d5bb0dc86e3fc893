"""Ctrl-C and SIGTERM stop a run cleanly at any point, and it resumes to the same result without
drawing a release twice; an unexpected error is one line, its trace in the run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import small_config
from privevo.pipelines.cli import main
from privevo.pipelines.evolution import synthesize
from privevo.pipelines.hooks import RunObserver
from privevo.pipelines.interrupts import Interrupted, interrupts_as_exceptions
from privevo.pipelines.privacy import PrivacyLedger

pytestmark = pytest.mark.filterwarnings("ignore::privevo.pipelines.privacy.InsecureNoiseWarning")
NOISE_SEED = 77
ROOT = Path(__file__).resolve().parents[1]


def config():
    return small_config(**{"resources.engine": "in_process"})


def rows(run_dir: Path):
    return pq.read_table(run_dir / "synthetic.parquet").drop_columns(["png"]).to_pydict()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    synthesize(config(), run_dir, insecure_noise_seed=NOISE_SEED)
    return run_dir


class SignalAt(RunObserver):
    """Sends ``signum`` to this process at one event; fails the test if a recorded release is drawn."""

    def __init__(self, event: str, generation: int = 0, signum: int = signal.SIGTERM, recorded=()):
        self.event, self.generation, self.signum, self.recorded = event, generation, signum, set(recorded)

    def _at(self, event: str, generation: int = 0) -> None:
        if event == self.event and generation == self.generation:
            os.kill(os.getpid(), self.signum)
            time.sleep(0.5)  # the handler runs in the main thread, wherever it is by then

    def engine_started(self, engine):
        self._at("engine_started")

    def drawing_release(self, generation):
        assert generation not in self.recorded, f"release {generation} drawn twice"
        self._at("drawing_release", generation)

    def released(self, generation):
        self._at("released", generation)

    def writing_checkpoint(self, generation):
        self._at("writing_checkpoint", generation)  # on the background writer: the signal lands anywhere

    def finishing(self):
        self._at("finishing")


@pytest.mark.slow
@pytest.mark.parametrize("event,generation,signum", [
    ("engine_started", 0, signal.SIGINT),
    ("drawing_release", 1, signal.SIGTERM),
    ("released", 1, signal.SIGTERM),
    ("writing_checkpoint", 1, signal.SIGINT),
    ("drawing_release", 3, signal.SIGTERM),
    ("finishing", 0, signal.SIGTERM),
])
def test_a_signal_at_any_stage_stops_the_run_and_it_resumes_to_the_same_result(
        event, generation, signum, reference, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted) as info, interrupts_as_exceptions():
        synthesize(config(), run_dir, insecure_noise_seed=NOISE_SEED, observer=SignalAt(event, generation, signum))
    assert info.value.signal_name == signal.Signals(signum).name
    if not run_dir.exists():  # stopped before any release: nothing was spent or kept
        synthesize(config(), run_dir, insecure_noise_seed=NOISE_SEED)
    else:
        recorded = PrivacyLedger(run_dir).generations()
        synthesize(config(), run_dir, resume=True, insecure_noise_seed=NOISE_SEED,
                   observer=SignalAt("none", recorded=recorded))
    assert rows(run_dir) == rows(reference)
    assert PrivacyLedger(run_dir).generations() == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_to_the_command_on_ray_prints_how_to_resume_and_exits_143(tmp_path, ray_session):
    """A stopped Ray job or a preempted pod: the process gets SIGTERM (Ray's driver turns it into
    sys.exit(15)); the run stops cleanly, says how to resume, and the resumed run is the same."""
    env = {**os.environ, "PRIVEVO_INSECURE_NOISE_SEED": "5", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "privevo.pipelines.cli", "synthesize", "configs/digits.yaml",
               "--set", "generations=3", "--set", "population.final_per_class=20", "--quiet"]
    whole = tmp_path / "whole"
    subprocess.run([*command, "--out", str(whole)], cwd=ROOT, env=env, check=True, capture_output=True)
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([*command, "--out", str(stopped)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = stopped / "ledger.jsonl"
    deadline = time.time() + 300
    while not (ledger.exists() and ledger.read_text().count("\n") >= 1) and time.time() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last == f"privevo: stopped by SIGTERM; resume with: privevo synthesize --resume {stopped}"
    assert "Traceback" not in err
    subprocess.run([*command[:4], "--resume", str(stopped), "--quiet"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    assert rows(stopped) == rows(whole)


def test_an_unexpected_error_is_one_line_with_its_trace_in_the_run_directory(tmp_path, capsys, monkeypatch):
    from privevo.pipelines import report

    def broken(*args, **kwargs):
        value = 1234.5  # a private value a message might quote (the source line itself does not)
        raise RuntimeError(f"a message that might quote data: {value}")

    monkeypatch.setattr(report, "plot_progress", broken)
    monkeypatch.setenv("PRIVEVO_INSECURE_NOISE_SEED", "3")
    out = tmp_path / "run"
    argv = ["synthesize", "configs/digits.yaml", "--out", str(out), "--quiet", "--set", "generations=1",
            "--set", "resources.engine=in_process"]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1
    assert err[0].startswith("privevo: error: unexpected RuntimeError in tests/test_interrupts.py:")
    assert err[0].endswith(f"the trace is in {out / 'error.log'}; resume with: privevo synthesize --resume {out}")
    assert "1234.5" not in err[0] and "1234.5" not in (out / "error.log").read_text()
    assert "RuntimeError" in (out / "error.log").read_text()
    assert "1234.5" in (out / "private" / "error.log").read_text()
    assert (out / "private").stat().st_mode & 0o077 == 0
    monkeypatch.undo()
    monkeypatch.setenv("PRIVEVO_INSECURE_NOISE_SEED", "3")
    assert main(["synthesize", "--resume", str(out), "--quiet"]) == 0
    assert (out / "report.json").exists()
