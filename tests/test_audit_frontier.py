"""The privacy-utility frontier (benchmarks/audit_frontier.py) and its plot (plots.plot_frontier)."""

from __future__ import annotations

import numpy as np
import pytest
from privevo.pipelines.audit.plots import plot_frontier, plot_tradeoff
from scipy import stats

from benchmarks.audit_frontier import (
    accuracy_interval,
    compare,
    crossings,
    frontier_row,
    frontier_table,
    markdown_table,
)


def _entry(kind: str, accuracies: np.ndarray, tpr: float, eps: float | None, **extra) -> dict:
    """A report row as ``reduce_audit`` writes it, from per-run accuracies."""
    return {"kind": kind, "accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "tpr_at_0.1pct_fpr": tpr, "tpr_at_0.1pct_fpr_ci": [max(tpr - 0.01, 0.0), tpr + 0.02],
            "tpr_at_0.1pct_fpr_negatives": 1600, "epsilon_lower": 0.1, "epsilon_point": 0.5, "auc": 0.55,
            "target_epsilon": eps, **extra}


def _report(rng: np.random.Generator, runs: int = 32, skip: tuple = ()) -> dict:
    paradigms = {"none": _entry("none", rng.normal(0.95, 0.01, runs), 0.99, None)}
    for eps, pe_acc, dp_acc in ((0.5, 0.83, 0.70), (1.0, 0.86, 0.80), (2.0, 0.88, 0.89), (4.0, 0.90, 0.93)):
        if ("pe", eps) not in skip:
            paradigms[f"pe-eps{eps:g}"] = _entry("pe", rng.normal(pe_acc, 0.02, runs), 0.001, eps)
        if ("dpsgd", eps) not in skip:
            paradigms[f"dpsgd-eps{eps:g}"] = _entry("dpsgd", rng.normal(dp_acc, 0.02, runs), 0.004, eps)
    paradigms["pe-eps4-one-run"] = _entry("pe", np.array([0.9]), 0.0, 4.0, one_run={"model": {}})
    return {"runs": runs, "paradigms": paradigms}


def test_accuracy_interval_is_the_t_interval_of_the_per_run_accuracies():
    acc = np.random.default_rng(1).normal(0.9, 0.03, 20)
    low, high = accuracy_interval(float(np.mean(acc)), float(np.std(acc)), len(acc))
    want = stats.t.interval(0.95, len(acc) - 1, loc=np.mean(acc), scale=stats.sem(acc))
    assert (low, high) == pytest.approx(want, rel=1e-9)
    assert accuracy_interval(0.9, 0.0, 1) == (0.9, 0.9)


def test_table_has_one_row_per_epsilon_and_reports_missing_ones():
    rng = np.random.default_rng(0)
    report = _report(rng, skip=(("dpsgd", 2.0),))
    reference = {"runs": 64, "paradigms": {
        "dfkd": _entry("dfkd", rng.normal(0.87, 0.03, 64), 0.28, None),
        "coreset-herding": _entry("coreset", rng.normal(0.92, 0.01, 64), 0.07, None),
        "none": _entry("none", rng.normal(0.95, 0.01, 64), 1.0, None),  # the frontier's own plain run is used
    }}
    table = frontier_table(report, reference, source="a/report.json", reference_source="b/report.json",
                           epsilons=(0.5, 1.0, 2.0, 4.0, 8.0))
    assert [r["epsilon"] for r in table["curves"]["pe"]] == [0.5, 1.0, 2.0, 4.0]  # the one-run row is left out
    assert [r["epsilon"] for r in table["curves"]["dpsgd"]] == [0.5, 1.0, 4.0]
    assert {(m["family"], m["epsilon"]) for m in table["missing"]} == {("pe", 8.0), ("dpsgd", 2.0), ("dpsgd", 8.0)}
    assert set(table["points"]) == {"none", "dfkd", "coreset-herding"}
    assert table["points"]["none"]["source"] == "a/report.json"
    assert table["points"]["dfkd"]["source"] == "b/report.json"
    assert table["points"]["dfkd"]["runs"] == 64
    for row in [*table["curves"]["pe"], *table["points"].values()]:
        low, high = row["accuracy_ci"]
        assert low < row["accuracy"] < high
        assert 0 < high - low < 0.05  # a CI of the mean over 32-64 runs, not the spread
        assert row["tpr_at_0.1pct_fpr_ci"][0] <= row["tpr_at_0.1pct_fpr"] <= row["tpr_at_0.1pct_fpr_ci"][1]
    # Epsilons present in both families only.
    assert [c["epsilon"] for c in table["comparison"]] == [0.5, 1.0, 4.0]
    assert len(markdown_table(table).splitlines()) == 2 + 4 + 3 + 3


def test_comparison_matches_welchs_test_and_finds_the_crossing():
    rng = np.random.default_rng(2)
    report = _report(rng)
    table = frontier_table(report, None, source="r.json", epsilons=(0.5, 1.0, 2.0, 4.0))
    verdicts = [c["accuracy"] for c in table["comparison"]]
    assert verdicts[0] == verdicts[1] == "pe more accurate"
    assert verdicts[3] == "dpsgd more accurate"
    assert table["comparison"][0]["pe_more_accurate_at_equal_or_lower_leakage"]
    # The interval is Welch's, as scipy computes it from the per-run accuracies.
    a, b = rng.normal(0.86, 0.02, 32), rng.normal(0.85, 0.04, 24)
    got = compare(frontier_row("pe", _entry("pe", a, 0.001, 1.0), 32, "r"),
                  frontier_row("dpsgd", _entry("dpsgd", b, 0.004, 1.0), 24, "r"))
    want = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert got["accuracy_difference_ci"] == pytest.approx([want.low, want.high], rel=1e-9)
    # PE above at 0.5-1, DP-SGD above at 4: one crossing, between 1 and 4.
    assert len(table["crossings"]) == 1
    cross = table["crossings"][0]
    assert cross["above"] == "dpsgd more accurate"
    assert 1.0 <= cross["between"][0] < cross["epsilon"] < cross["between"][1] <= 4.0


def test_more_leakage_is_not_called_equal_or_lower():
    rng = np.random.default_rng(3)
    acc = rng.normal(0.9, 0.01, 32)
    pe = frontier_row("pe", _entry("pe", acc + 0.05, 0.2, 1.0), 32, "r")
    dp = frontier_row("dpsgd", _entry("dpsgd", acc, 0.002, 1.0), 32, "r")
    got = compare(pe, dp)
    assert got["accuracy"] == "pe more accurate"
    assert not got["pe_leaks_no_more"]
    assert not got["pe_more_accurate_at_equal_or_lower_leakage"]
    assert crossings([{**got, "epsilon": 1.0}, {**got, "epsilon": 2.0}]) == []


def test_plots_carry_intervals(tmp_path):
    rng = np.random.default_rng(4)
    table = frontier_table(_report(rng), None, source="r.json", epsilons=(0.5, 1.0))
    path = tmp_path / "frontier.png"
    plot_frontier(table["curves"], table["points"], path)
    from matplotlib.image import imread

    image = imread(path)
    assert image.shape[1] > 2 * image.shape[0] * 0.9  # two panels side by side
    # The audit's own trade-off plot takes rows with or without intervals.
    rows = {"a": _entry("none", np.array([0.9, 0.92]), 0.5, None),
            "b": {"accuracy": 0.8, "tpr_at_0.1pct_fpr": 0.0}}
    plot_tradeoff(rows, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000
