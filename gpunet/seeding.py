"""Where a model's initial randomness comes from.

An explicit integer ``seed`` gives a private generator (the same weights on every
run). ``seed=None`` draws from NumPy's global generator, as CS231n code and
scikit-learn's ``random_state=None`` do, so ``np.random.seed(k)`` before building
two models makes them identical.
"""

from __future__ import annotations

import numpy as np


def init_rng(seed):
    """A generator with ``standard_normal``/``integers``-like draws: private for a seed, global for None."""
    if seed is None:
        return np.random.mtrand._rand  # the global RandomState that np.random.seed() resets
    return np.random.default_rng(seed)


def resolve_seed(seed) -> int:
    """``seed`` itself, or for None an integer drawn from NumPy's global generator."""
    if seed is None:
        return int(np.random.randint(0, 2**31 - 1))
    return int(seed) if not isinstance(seed, (list, tuple)) else seed


def uniform_init(rng, shape, fan_in, dtype):
    """``W`` and ``b`` drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for Linear and Conv2d.

    Chosen over He initialisation (std sqrt(2/fan_in), what ``FullyConnectedNet`` uses)
    because convnets trained better with it (the comparison is in docs/RESULTS.md).
    """
    bound = 1.0 / np.sqrt(fan_in)
    return {
        "W": rng.uniform(-bound, bound, shape).astype(dtype),
        "b": rng.uniform(-bound, bound, shape[-1] if len(shape) == 2 else shape[0]).astype(dtype),
    }
