"""The vote histogram's sensitivity, thresholding, selection and schedules."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privevo.actors.knn import exact_knn
from privevo.pipelines.histogram import (
    degree_schedule,
    select_parents,
    sensitivity,
    threshold_counts,
    vote_histogram,
    vote_weight,
)


def class_histograms(private, private_labels, synthetic, synthetic_labels, k):
    """Per-class un-noised histograms, as a voter shard computes them."""
    out = {}
    for label in np.unique(synthetic_labels):
        syn = synthetic[synthetic_labels == label]
        queries = private[private_labels == label]
        neighbours = exact_knn(queries, syn, min(k, len(syn)))
        out[int(label)] = vote_histogram(neighbours, len(syn))
    return out


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 8),
    n_classes=st.integers(1, 4),
    n_private=st.integers(0, 40),
    n_synthetic=st.integers(8, 30),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    duplicate=st.booleans(),
)
def test_one_sample_moves_each_class_histogram_by_at_most_one(k, n_classes, n_private, n_synthetic, dim, seed, duplicate):
    rng = np.random.default_rng(seed)
    synthetic = rng.normal(size=(n_synthetic * n_classes, dim)).astype(np.float32)
    synthetic_labels = np.repeat(np.arange(n_classes), n_synthetic)
    if duplicate:  # exact ties between synthetic samples must not break the bound
        synthetic[1::2] = synthetic[0::2][: len(synthetic[1::2])]
    private = rng.normal(size=(n_private, dim)).astype(np.float32)
    private_labels = rng.integers(0, n_classes, size=n_private)
    extra = rng.normal(size=(1, dim)).astype(np.float32)
    extra_label = int(rng.integers(0, n_classes))

    before = class_histograms(private, private_labels, synthetic, synthetic_labels, k)
    after = class_histograms(
        np.concatenate([private, extra]), np.append(private_labels, extra_label),
        synthetic, synthetic_labels, k,
    )
    total_sq = 0.0
    for label in before:
        moved = np.linalg.norm(after[label] - before[label])
        assert moved <= 1.0 + 1e-9
        if label != extra_label:
            assert moved == 0.0
        total_sq += moved**2
    # the added sample's k votes weigh 1/sqrt(k) each: exactly norm 1 in total
    assert math.isclose(math.sqrt(total_sq), 1.0, rel_tol=1e-9)
    # replace-one neighbours: one private sample swapped for another moves the histograms by at most
    # sqrt(2) in total (its k old votes leave, k new ones come); 1/sqrt(k) weights make this hold
    if n_private:
        swapped = private.copy()
        swapped[0] = extra[0]
        swapped_labels = private_labels.copy()
        swapped_labels[0] = extra_label
        replaced = class_histograms(swapped, swapped_labels, synthetic, synthetic_labels, k)
        assert math.sqrt(sum(np.linalg.norm(replaced[l] - before[l]) ** 2 for l in before)) <= math.sqrt(2) + 1e-9


def test_vote_histogram_weights_and_mass():
    neighbours = np.array([[0, 1], [1, 2], [1, 0]])
    hist = vote_histogram(neighbours, 4)
    np.testing.assert_allclose(hist, np.array([2, 3, 1, 0]) / math.sqrt(2))
    # each private sample contributes sqrt(k) in L1 and 1 in L2
    assert math.isclose(hist.sum(), 3 * math.sqrt(2))


def test_vote_histogram_rejects_bad_input():
    with pytest.raises(ValueError, match="out of range"):
        vote_histogram(np.array([[5]]), 3)
    with pytest.raises(ValueError, match="larger than"):
        vote_histogram(np.zeros((2, 4), dtype=int), 3)
    with pytest.raises(ValueError, match="k must be"):
        vote_weight(0)


def test_sensitivity_by_relation():
    assert sensitivity("add_remove") == 1.0
    assert math.isclose(sensitivity("replace"), math.sqrt(2))
    with pytest.raises(ValueError, match="neighbour relation"):
        sensitivity("user")


def test_threshold_subtracts_and_clips():
    out = threshold_counts(np.array([-3.0, 0.5, 2.0, 10.0]), 1.0)
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 9.0])
    with pytest.raises(ValueError):
        threshold_counts(np.ones(2), -1)


def test_sample_selection_follows_counts():
    rng = np.random.default_rng(1)
    counts = np.array([0.0, 1.0, 3.0, 0.0])
    picks = select_parents(counts, 40_000, rng, "sample")
    freq = np.bincount(picks, minlength=4) / len(picks)
    np.testing.assert_allclose(freq, [0, 0.25, 0.75, 0], atol=0.01)


def test_rank_selection_takes_top_bins_cyclically():
    rng = np.random.default_rng(0)
    counts = np.array([0.0, 5.0, 2.0, 9.0, 0.0])
    np.testing.assert_array_equal(select_parents(counts, 2, rng, "rank"), [3, 1])
    np.testing.assert_array_equal(select_parents(counts, 5, rng, "rank"), [3, 1, 2, 3, 1])


def test_starved_class_falls_back_to_uniform():
    rng = np.random.default_rng(0)
    picks = select_parents(np.zeros(10), 5000, rng, "sample")
    assert len(np.unique(picks)) == 10


def test_selection_refuses_unthresholded_counts():
    with pytest.raises(ValueError, match="non-negative"):
        select_parents(np.array([1.0, -0.5]), 3, np.random.default_rng(0))


def test_degree_schedules():
    np.testing.assert_allclose(degree_schedule(0.8, 0.2, 3), [0.8, 0.4, 0.2])
    np.testing.assert_allclose(degree_schedule(0.8, 0.2, 3, "linear"), [0.8, 0.5, 0.2])
    np.testing.assert_allclose(degree_schedule(0.5, 0.1, 4, "constant"), [0.5] * 4)
    with pytest.raises(ValueError):
        degree_schedule(0.0, 0.1, 3)
