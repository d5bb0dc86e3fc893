"""The bundled digits set (scikit-learn's ``load_digits``): public, split once with a fixed seed."""

from __future__ import annotations

import numpy as np

from .split import Split

DIGITS_HELDOUT = 597
DIGITS_SPLIT_SEED = 0


def digits_split() -> tuple[Split, Split]:
    """The fixed split (private, held-out): stratified, seeded independently of any run."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_priv, x_held, y_priv, y_held = train_test_split(
        x, y, test_size=DIGITS_HELDOUT, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return Split(x_priv, y_priv), Split(x_held, y_held)
