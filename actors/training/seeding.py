"""Per-run random generators: one ``torch.Generator`` per (run seed, purpose of the draw).

Each run draws from its own generators only, so a run's result never depends on the other runs
of its batch; each purpose has its own stream, so e.g. turning augmentation on does not change a
run's initialisation or minibatch order.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AUGMENT", "INIT", "NOISE", "ORDER", "SAMPLE", "derived_generator"]

# Purposes of the trainer's random draws (the paradigms use purposes from 100 on).
INIT, ORDER, AUGMENT, SAMPLE, NOISE = range(5)


def derived_generator(seed: int, purpose: int) -> torch.Generator:
    """The generator of one run (``seed``) for one purpose, seeded through a ``SeedSequence``
    of both so that nearby seeds and purposes give unrelated streams."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, purpose]).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g
