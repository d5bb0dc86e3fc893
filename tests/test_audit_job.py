"""The audit job end to end on digits: outputs, report keys, leakage found where it exists."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.config import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def write_config(tmp_path, text):
    path = tmp_path / "audit.yaml"
    path.write_text(text)
    return path


SMALL = """
name: audit-small
seed: 1
runs: 16
canaries: {count: 40}
training: {hidden: [128], epochs: 60}
paradigms:
  - {kind: none}
  - {name: dpsgd-eps1, kind: dpsgd, epsilon: 1.0, epochs: 10, batch_size: 256, lr: 1.0, momentum: 0.0}
"""


def test_audit_finds_leakage_of_plain_training_not_of_dpsgd(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", str(write_config(tmp_path, SMALL)), "--out", str(out)]) == 0
    assert "| none |" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    none, dp = report["paradigms"]["none"], report["paradigms"]["dpsgd-eps1"]
    for p in (none, dp):
        for key in ("accuracy", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "auc", "epsilon_lower", "epsilon_lower_ci", "epsilon"):
            assert key in p
        assert len(p["epsilon_lower_ci"]) == 2
    assert none["epsilon"] is None and abs(dp["epsilon"] - 1.0) < 0.05
    assert none["accuracy"] > 0.85
    assert none["auc"] > 0.9  # mislabeled canaries are memorised by plain training
    assert none["tpr_at_1pct_fpr"] > 0.5
    assert dp["epsilon_lower_ci"][0] <= dp["epsilon"]  # never claims more leakage than DP allows
    membership = np.load(out / "membership.npy")
    assert membership.shape == (16, 40) and (membership.sum(0) == 8).all()
    scores = pq.read_table(out / "scores.parquet")
    assert scores.num_rows == 2 * 16 * 40
    assert (out / "roc.png").stat().st_size > 1000 and (out / "tradeoff.png").stat().st_size > 1000
    low, high = none["tpr_at_1pct_fpr_ci"]
    assert low <= none["tpr_at_1pct_fpr"] <= high
    assert oct((out / "private").stat().st_mode & 0o777) == "0o700"


def test_audit_config_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"runs: must be even"):
        from pipelines.audit.job import load_audit_config

        load_audit_config(write_config(tmp_path, SMALL.replace("runs: 16", "runs: 15")))
    with pytest.raises(ConfigError, match=r"paradigms\.0\.epsilon: required"):
        load_audit_config(write_config(tmp_path, SMALL.replace("- {kind: none}", "- {kind: dpsgd}")))
    with pytest.raises(ConfigError, match=r"paradigms\.0\.kind"):
        load_audit_config(write_config(tmp_path, SMALL.replace("- {kind: none}", "- {kind: magic}")))


def test_pe_paradigm_runs_pe_per_run_and_stays_below_its_epsilon(tmp_path):
    from pathlib import Path

    digits = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
    text = f"""
name: audit-pe
seed: 2
runs: 8
canaries: {{count: 20}}
training: {{hidden: [64], epochs: 30}}
paradigms:
  - {{kind: pe, epsilon: 2.0, synthesize: {digits},
      set: [generations=2, population.per_class=20, population.final_per_class=40, vote.k=1, generators=1]}}
"""
    out = tmp_path / "audit"
    assert main(["audit", str(write_config(tmp_path, text)), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    pe = report["paradigms"]["pe"]
    assert pe["epsilon"] is not None and abs(pe["epsilon"] - 2.0) < 0.05  # accounted by each PE run
    assert pe["epsilon_lower_ci"][0] <= pe["epsilon"]
    assert pe["accuracy"] > 0.5  # classifiers trained on each run's own DP synthetic set
    # each run's private set, and its PE run, live in the owner-only private folder
    private = out / "private"
    assert len(list((private / "pe").glob("run-*.npz"))) == 8
    assert all((private / "pe" / f"run-{r:04d}" / "ledger.jsonl").exists() for r in range(8))
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    # mechanism level: the canary's vote projected out of the releases shifts by the accounted mu
    from pipelines.privacy import PrivacyLedger, gaussian_mu

    ledger = PrivacyLedger(private / "pe" / "run-0000")
    mech = report["levels"]["pe (mechanism)"]
    assert mech["mu_theory"] == pytest.approx(gaussian_mu(ledger.noise_multipliers()), rel=1e-6)  # k=1: full votes
    assert abs(mech["mu_estimate"] - mech["mu_theory"]) < 4 * mech["mu_estimate_se"]
    assert abs(mech["sd_out"] - 1) < 0.3
    assert mech["epsilon_lower_ci"][0] <= pe["epsilon"] and mech["violation"] is False
    for level in ("pe (synthetic: distance)", "pe (synthetic: density_ratio)"):
        assert 0 <= report["levels"][level]["auc"] <= 1
    assert pq.read_table(out / "scores.parquet").num_rows == 4 * 8 * 20  # model, mechanism, 2 synthetic
