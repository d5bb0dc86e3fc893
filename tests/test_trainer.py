"""The audit's batched trainer: R small models trained as one (torch.func vmap), plain and DP-SGD."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from privevo.actors.training.accounting import (
    DPSGDAccountant,
    dpsgd_epsilon,
    dpsgd_noise_multiplier,
)
from privevo.actors.training.augment import shift_images, shift_queries
from privevo.actors.training.dpsgd import (
    add_noise_and_average,
    clip_per_example_grads,
    clipped_grad_sum,
    dpsgd_steps,
    per_example_grads,
    train_batched_dpsgd,
)
from privevo.actors.training.models import TrainSpec, build_template, init_params
from privevo.actors.training.train import train_batched


@pytest.fixture(scope="module")
def digits():
    """The demo's split: 1,200 private / 597 held-out, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=597, stratify=y, random_state=0)
    return xtr, ytr, xte, yte


def _canaries(y, n_canaries, n_runs, rng):
    """Mislabel n_canaries examples; each canary in exactly half of the runs."""
    idx = rng.choice(len(y), n_canaries, replace=False)
    y2 = y.copy()
    y2[idx] = (y[idx] + rng.integers(1, 10, n_canaries)) % 10
    w = np.ones((n_runs, len(y)))
    for j in idx:
        w[rng.permutation(n_runs)[: n_runs // 2], j] = 0
    return idx, y2, w


def _stacked(spec, shape, seeds, n_classes=10):
    t = build_template(spec, shape, n_classes)
    per = [init_params(t, s) for s in seeds]
    return t, {k: torch.stack([p[k] for p in per]) for k in per[0]}


# ---------------------------------------------------------------------------------------------
# plain training


def test_every_run_learns_digits(digits):
    xtr, ytr, xte, yte = digits
    spec = TrainSpec(epochs=15)  # the default model and optimizer, fewer epochs
    w = np.ones((4, len(ytr)))
    model = train_batched(xtr, ytr, w, spec, seeds=[0, 1, 2, 3], n_classes=10, threads=2)
    acc = model.accuracy(xte, yte)
    assert acc.shape == (4,)
    assert (acc > 0.9).all(), acc
    logits = model.logits(xte[:5])
    assert logits.shape == (4, 5, 10) and logits.dtype == np.float32
    # runs differ (own init and order), yet a pickled model gives the same logits (Ray returns)
    assert not np.allclose(logits[0], logits[1])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).logits(xte[:5]), logits)


@pytest.mark.parametrize(
    "spec",
    [
        TrainSpec(hidden=(32,), epochs=3, batch_size=32, augment=True),
        TrainSpec(hidden=(32, 16), epochs=3, batch_size=50, optimizer="adam", lr=3e-3, weight_decay=1e-3),
        TrainSpec(arch="cnn", channels=(4,), hidden=(16,), epochs=2, batch_size=64, augment=True, flip=True),
    ],
    ids=["sgd-augment", "adam-wd", "cnn"],
)
def test_batched_run_equals_run_alone(digits, spec):
    """Run k of a batch is the run it would be alone: same seed, same mask, same logits. Run 2
    has far fewer examples, so it finishes its epochs in fewer steps and is frozen meanwhile."""
    xtr, ytr, xte, _ = digits
    rng = np.random.default_rng(1)
    w = (rng.random((4, len(ytr))) < 0.8).astype(np.float64)
    w[2] = 0
    w[2, :300] = 1
    seeds = [11, 12, 13, 14]
    batch = train_batched(xtr, ytr, w, spec, seeds, 10, threads=1)
    assert batch.info["steps"][2] < batch.info["steps"][0]
    for k in (2, 3):
        alone = train_batched(xtr, ytr, w[k : k + 1], spec, [seeds[k]], 10, threads=1)
        np.testing.assert_allclose(batch.logits(xte)[k], alone.logits(xte)[0], rtol=1e-4, atol=1e-4)
    # a different seed gives a different run
    other = train_batched(xtr, ytr, w[3:4], spec, [99], 10, threads=1)
    assert np.abs(other.logits(xte)[0] - batch.logits(xte)[3]).max() > 1e-2


def test_mask_excludes_data(digits):
    """A run whose mask leaves out every 0 hardly ever predicts 0; its twin that saw them does."""
    xtr, ytr, xte, _ = digits
    w = np.ones((2, len(ytr)))
    w[0, ytr == 0] = 0
    model = train_batched(xtr, ytr, w, TrainSpec(epochs=10), seeds=[5, 5], n_classes=10, threads=2)
    pred = model.logits(xte).argmax(-1)
    assert (pred[0] == 0).mean() < 0.01
    assert (pred[1] == 0).mean() > 0.08


def test_membership_leaves_a_trace(digits):
    """The point of the audit: a mislabeled canary is predicted with its (wrong) label by the runs
    that trained on it, and almost never by the runs that did not."""
    xtr, ytr, _, _ = digits
    rng = np.random.default_rng(0)
    idx, y2, w = _canaries(ytr, 40, 6, rng)
    model = train_batched(xtr, y2, w, TrainSpec(), seeds=list(range(6)), n_classes=10, threads=2)
    hit = model.logits(xtr[idx]).argmax(-1) == y2[idx][None, :]  # (R, canaries)
    inside = w[:, idx] == 1
    assert hit[inside].mean() > 0.6, hit[inside].mean()
    assert hit[~inside].mean() < 0.1, hit[~inside].mean()


def test_shift_queries_and_augmented_logits(digits):
    xtr, ytr, xte, _ = digits
    img = torch.arange(1, 10, dtype=torch.float32).view(1, 1, 3, 3)
    down = shift_images(img, torch.tensor([1]), torch.tensor([0]))
    assert down[0, 0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    left_flipped = shift_images(img, torch.tensor([0]), torch.tensor([-1]), torch.tensor([True]))
    assert left_flipped[0, 0].tolist() == [[2, 1, 0], [5, 4, 0], [8, 7, 0]]
    assert len(shift_queries(1)) == 9 and len(shift_queries(1, flips=True)) == 18

    model = train_batched(xtr, ytr, np.ones((2, len(ytr))), TrainSpec(epochs=1), [0, 1], 10)
    assert model.logits_augmented(xte[:7]).shape == (2, 1, 7, 10)  # trained without shifts
    shifted = train_batched(xtr, ytr, np.ones((1, len(ytr))), TrainSpec(epochs=1, augment=True), [0], 10)
    assert shifted.logits_augmented(xte[:7]).shape == (1, 9, 7, 10)  # the shifts it was trained on
    aug = model.logits_augmented(xte[:7], shift_queries(1))  # digits: 9 one-pixel shifts, no flips
    assert aug.shape == (2, 9, 7, 10)
    zero = shift_queries(1).index((0, 0, False))
    np.testing.assert_allclose(aug[:, zero], model.logits(xte[:7]), atol=1e-6)
    assert not np.allclose(aug[:, 0], aug[:, zero])
    two = model.logits_augmented(xte[:7], shifts=[(0, 0), (1, -1, True)])
    assert two.shape == (2, 2, 7, 10)


def test_bad_inputs_are_refused(digits):
    xtr, ytr, _, _ = digits
    w = np.ones((2, len(ytr)))
    with pytest.raises(ValueError, match="0/1"):
        train_batched(xtr, ytr, w * 0.5, TrainSpec(epochs=1), [0, 1], 10)
    with pytest.raises(ValueError, match="seeds"):
        train_batched(xtr, ytr, w, TrainSpec(epochs=1), [0], 10)
    with pytest.raises(ValueError, match="weights"):
        train_batched(xtr, ytr, w[:, :10], TrainSpec(epochs=1), [0, 1], 10)
    with pytest.raises(ValueError, match="optimizer"):
        TrainSpec(optimizer="rmsprop")


# ---------------------------------------------------------------------------------------------
# DP-SGD


def test_clipping_bounds_each_example():
    spec = TrainSpec(hidden=(32,))
    t, params = _stacked(spec, (1, 8, 8), [0, 1, 2])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 1, 8, 8, generator=g)
    x[:, :8] *= 50  # a spread of gradient norms
    y = torch.randint(0, 10, (3, 16), generator=g)
    grads = per_example_grads(t, params, x, y)
    assert grads["out.weight"].shape == (3, 16, 10, 32)
    full = torch.sqrt(sum(v.flatten(2).pow(2).sum(-1) for v in grads.values()))
    c = float(full.median())  # half the examples above the bound, half below
    clipped, norms = clip_per_example_grads(grads, c)
    torch.testing.assert_close(norms, full)
    after = torch.sqrt(sum(v.flatten(2).pow(2).sum(-1) for v in clipped.values()))
    big, small = norms > c * 1.01, norms < c
    assert big.sum() >= 16 and small.sum() >= 16
    assert (after <= c * (1 + 1e-5)).all()
    torch.testing.assert_close(after[big], torch.full_like(after[big], c), rtol=1e-4, atol=0)
    for k in grads:  # examples within the bound are left as they are
        torch.testing.assert_close(clipped[k][small], grads[k][small])


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_clipped_sum_matches_per_example_reference(method):
    """clipped_grad_sum (both the torch.func path and the MLP fast path) = sum over the sampled
    examples of the clipped per-example gradients; padding rows contribute nothing."""
    spec = TrainSpec(hidden=(24, 12))
    t, params = _stacked(spec, (1, 8, 8), [3, 4, 5, 6])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 9, 1, 8, 8, generator=g) * 4
    y = torch.randint(0, 10, (4, 9), generator=g)
    sampled = (torch.rand(4, 9, generator=g) < 0.6).float()
    clipped, norms_ref = clip_per_example_grads(per_example_grads(t, params, x, y), 0.3)
    sums, norms = clipped_grad_sum(t, params, x, y, sampled, 0.3, method=method, max_elements=5000)
    torch.testing.assert_close(norms, norms_ref, rtol=1e-4, atol=1e-6)
    for k, v in clipped.items():
        ref = (v * sampled.view(4, 9, *([1] * (v.dim() - 2)))).sum(1)
        torch.testing.assert_close(sums[k], ref, rtol=1e-4, atol=1e-6)


def test_noise_std_and_independence():
    sigma, c, r = 1.7, 0.5, 3
    zeros = {"a": torch.zeros(r, 300, 200), "b": torch.zeros(r, 40000)}
    expected = torch.tensor([10.0, 20.0, 40.0])
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = add_noise_and_average(zeros, sigma, c, expected, gens)
    noise = torch.cat([out["a"].flatten(1), out["b"]], 1) * expected[:, None]  # undo the average
    std = noise.std(dim=1)
    assert torch.allclose(std, torch.tensor(sigma * c), rtol=0.01), std
    assert noise.mean(dim=1).abs().max() < 0.01
    corr = torch.corrcoef(noise)
    assert (corr - torch.eye(r)).abs().max() < 0.01  # runs get independent noise
    again = add_noise_and_average(zeros, sigma, c, expected, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    torch.testing.assert_close(again["b"], out["b"])  # seeded per run: reproducible audit runs


@pytest.mark.parametrize("target", [1.0, 4.0])
def test_accounting_round_trip(target):
    q, delta = 256 / 1150, 1e-5
    steps = dpsgd_steps(30, q)
    sigma = dpsgd_noise_multiplier(target, delta, q, steps)
    eps = dpsgd_epsilon(sigma, q, steps, delta)
    assert abs(eps - target) <= 0.01 * target and eps <= target * 1.0001, (sigma, eps)
    assert dpsgd_epsilon(0.95 * sigma, q, steps, delta) > target  # sigma is (nearly) the smallest
    assert dpsgd_epsilon(sigma, q, 2 * steps, delta) > eps
    # an accountant stepped once per DP-SGD step composes to the same epsilon
    acc = DPSGDAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    assert acc.history == [(sigma, q, steps)] and acc.get_epsilon(delta) == eps


def test_dpsgd_learns_at_epsilon_4_and_noise_matters(digits):
    xtr, ytr, xte, yte = digits
    rng = np.random.default_rng(2)
    _, y2, w = _canaries(ytr, 50, 2, rng)
    spec = TrainSpec(epochs=30, batch_size=256, lr=1.0, momentum=0.0)
    n_inc = int(w[0].sum())
    q = spec.batch_size / n_inc
    steps = dpsgd_steps(spec.epochs, q)
    sigma = dpsgd_noise_multiplier(4.0, 1e-5, q, steps)
    model = train_batched_dpsgd(
        xtr, y2, w, spec, [0, 1], 10, noise_multiplier=sigma, max_grad_norm=1.0,
        sample_rate=q, steps=steps, threads=2,
    )
    assert model.info["steps"] == [steps, steps] and model.info["sample_rates"] == [q, q]
    acc = model.accuracy(xte, yte)
    assert (acc > 0.6).all(), acc
    loud = train_batched_dpsgd(
        xtr, y2, w, spec, [0, 1], 10, noise_multiplier=200.0, max_grad_norm=1.0,
        sample_rate=q, steps=steps, threads=2,
    )
    assert (loud.accuracy(xte, yte) < acc - 0.3).all()


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_dpsgd_batched_run_equals_run_alone(digits, arch):
    xtr, ytr, xte, _ = digits
    spec = TrainSpec(arch=arch, hidden=(32,), channels=(4,), epochs=2, batch_size=100, lr=0.5, augment=True)
    rng = np.random.default_rng(3)
    w = (rng.random((3, len(ytr))) < 0.9).astype(float)
    w[1] = 0
    w[1, :400] = 1  # its own sample rate (batch_size / 400) and more steps than the others
    kw = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "threads": 1}
    batch = train_batched_dpsgd(xtr, ytr, w, spec, [7, 8, 9], 10, **kw)
    assert batch.info["sample_rates"][1] == pytest.approx(100 / 400)
    for k in (0, 1):
        alone = train_batched_dpsgd(xtr, ytr, w[k : k + 1], spec, [[7, 8, 9][k]], 10, **kw)
        np.testing.assert_allclose(batch.logits(xte)[k], alone.logits(xte)[0], rtol=1e-4, atol=1e-4)


def test_global_rng_untouched(digits):
    """Every draw comes from the runs' own generators: torch's global RNG is not consumed."""
    xtr, ytr, _, _ = digits
    x, y, w = xtr[:200], ytr[:200], np.ones((2, 200))
    state = torch.get_rng_state().clone()
    train_batched(x, y, w, TrainSpec(epochs=2, augment=True), [0, 1], 10)
    train_batched_dpsgd(x, y, w, TrainSpec(arch="cnn", channels=(4,), epochs=2, batch_size=20), [0, 1], 10, 1.0, 1.0)
    assert torch.equal(state, torch.get_rng_state())
