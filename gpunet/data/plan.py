"""The epoch plan and every seed stream: which random numbers a run draws, from what.

All randomness of a training run is a pure function of ``seed`` (and the epoch), so a
resumed run draws exactly what an uninterrupted one would. Each consumer draws from its
own stream, a ``numpy.random.default_rng`` seed list; the constants below name them, and
every module that draws imports them from here:

====================================  ==========================================
``[seed, epoch]``                     the sample order of an epoch (``epoch_permutation``, ``epoch_plan``)
``[seed, epoch, DROPOUT_STREAM]``     dropout masks of an epoch (the Solver sets ``model.rng``)
``[seed, epoch, AUGMENT_STREAM]``     augmentation draws (flips, crops) of an epoch
``[seed, TRAIN_EVAL_STREAM]``         the Solver's training-accuracy subsample
``[seed, CHECK_STREAM]``              the Solver's ``check_accuracy(X, y, num_samples)`` subsample
``[seed, LIMIT_STREAM]``              ``load_split(..., limit)``'s random subset
====================================  ==========================================
"""

from __future__ import annotations

import numpy as np

DROPOUT_STREAM = 1  # third seed word of the dropout generator
AUGMENT_STREAM = 0xA06  # third seed word: augmentation draws are independent of the order
TRAIN_EVAL_STREAM = 2**31 - 1  # second seed word of the Solver's train-accuracy subsample
CHECK_STREAM = 2**31 - 2  # second seed word of the Solver's check_accuracy subsample
LIMIT_STREAM = 7  # second seed word of load_split's random subset


def dropout_seed(seed: int, epoch: int) -> list:
    """Seed list of the dropout generator of ``epoch``."""
    return [int(seed), int(epoch), DROPOUT_STREAM]


def augment_seed(seed: int, epoch: int) -> list:
    """Seed list of the augmentation generator of ``epoch``."""
    return [int(seed), int(epoch), AUGMENT_STREAM]


def train_eval_seed(seed: int) -> list:
    """Seed list of the Solver's train-accuracy subsample."""
    return [int(seed), TRAIN_EVAL_STREAM]


def limit_seed(seed: int) -> list:
    """Seed list of ``load_split``'s random subset."""
    return [int(seed), LIMIT_STREAM]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation of ``range(n)`` from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def epoch_plan(n: int, chunk: int, window: int, seed: int, epoch: int, shuffle: bool = True):
    """How one epoch reads a chunked split: a list of windows ``(chunks, order)``.

    chunks: (W,) int64 indices of the file chunks (``chunk`` rows each) read together;
    order: (M,) int64 sample indices of those chunks in the order they are served.
    With ``shuffle`` the chunks are visited in a random order and each window's samples
    are permuted together (a shuffle buffer of ``window`` chunks); without, file order.
    A pure function of its arguments, so streaming and preloading serve the same batches.
    """
    n_chunks = -(-n // chunk)
    rng = np.random.default_rng([int(seed), int(epoch)])
    visit = rng.permutation(n_chunks) if shuffle else np.arange(n_chunks)
    plan = []
    for w in range(0, n_chunks, window):
        chunks = visit[w : w + window]
        order = np.concatenate([np.arange(c * chunk, min((c + 1) * chunk, n)) for c in chunks])
        if shuffle:
            rng.shuffle(order)
        plan.append((chunks, order))
    return plan
