"""How good is a synthetic set: downstream accuracy and Frechet distance.

Both are measured against held-out real data by default. The one reference that
touches the private set (a classifier trained on it) is computed by
:func:`private_reference_accuracy`, only when asked for, and kept under the run's
private/ folder.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from privevo.pipelines.data import load_heldout, load_private

CLASSIFIERS = ("svc", "logreg", "knn")


def make_classifier(kind: str):
    """The downstream classifier family; the same one scores every row of a report."""
    if kind == "svc":
        return SVC(C=10.0, gamma="scale")
    if kind == "logreg":
        return LogisticRegression(C=1.0, max_iter=3000)
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=5)
    raise ValueError(f"unknown classifier {kind!r}; known: {', '.join(CLASSIFIERS)}")


def _features(images: np.ndarray, max_value: float) -> np.ndarray:
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1) / max_value


def downstream_accuracy(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    classifier: str,
    max_value: float,
) -> float:
    """Accuracy on the test set of a classifier trained on the training set."""
    if len(np.unique(train_labels)) < 2:
        return float(np.mean(test_labels == train_labels[0])) if len(train_labels) else 0.0
    model = make_classifier(classifier)
    model.fit(_features(train_images, max_value), train_labels)
    return float(np.mean(model.predict(_features(test_images, max_value)) == test_labels))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings (FID's formula)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    # tr sqrt(A B) = sum of sqrt(eigenvalues of A^1/2 B A^1/2), a symmetric PSD
    # matrix: stable even when A or B is singular (constant pixels).
    w, v = linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_covmean = float(np.sqrt(np.clip(middle, 0.0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean)
    return max(value, 0.0)


def private_reference_accuracy(
    data: dict,
    classifier: str,
    max_value: float,
    features: str = "pixels",
    embedder: str = "pixels",
    embedder_options: dict | None = None,
    device: str = "cpu",
    labels: tuple[int, ...] | None = None,
) -> float:
    """Held-out accuracy of the classifier trained on the real private set (classes ``labels``).

    Touches private data and is not DP (it is the ceiling synthetic data is compared
    with): the driver writes it under the run's private/ folder only. Run it where
    private data may be read (a Ray task).
    """
    private = load_private(data, labels)
    heldout = load_heldout(data)
    if heldout is None:
        raise ValueError("the real-data baseline needs held-out data (data.heldout)")
    if labels is not None:
        heldout = heldout.restrict(labels)
    if features == "pixels":
        train, test, scale = private.samples, heldout.samples, max_value
    else:
        from privevo.actors.embedders import make_embedder

        model = make_embedder(embedder, max_value, embedder_options or {}, device)
        train, test, scale = model.embed(private.samples), model.embed(heldout.samples), 1.0
    return downstream_accuracy(
        train, private.labels, test, heldout.labels, classifier=classifier, max_value=scale
    )
