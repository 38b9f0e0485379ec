"""On-device image augmentation for training batches: random flips and padded crops.

Both loaders (``ArrayLoader``, ``H5Loader``) apply it after normalisation, drawing
from the generator ``plan.augment_seed(seed, epoch)``, so augmented epochs are reproducible.
"""

from __future__ import annotations

import numpy as np

from .. import backend


def check_augment(augment):
    """Normalise ``augment`` to None or ``{'flip': bool, 'crop_pad': int}``."""
    if not augment:
        return None
    if not isinstance(augment, dict):
        raise ValueError(
            f"augment: expected None or a dict like {{'flip': True, 'crop_pad': 4}}, got {augment!r}"
        )
    unknown = set(augment) - {"flip", "crop_pad"}
    if unknown:
        raise ValueError(f"augment: expected keys among 'flip', 'crop_pad', found {sorted(unknown)}")
    flip, pad = augment.get("flip", False), augment.get("crop_pad", 0)
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f"augment['flip']: expected True or False, got {flip!r}")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"augment['crop_pad']: expected an integer >= 0, got {pad!r}")
    return {"flip": bool(flip), "crop_pad": int(pad)} if (flip or pad) else None


def augment_images(x, rng, flip=False, crop_pad=0):
    """Random left-right flips and padded random crops of a batch, vectorised on its backend.

    x: (B, C, H, W) float, already normalised; rng: a generator of the same backend.
    flip: mirror each image with probability 1/2. crop_pad: pad each side by this many
    zeros (the mean colour after normalisation), then crop a random (H, W) window.
    Returns a new (B, C, H, W) array. Always draws the same numbers for the same options.
    """
    xp = backend.get_array_module(x)
    b, c, h, w = x.shape
    if flip:
        mirror = rng.random(b) < 0.5  # (B,)
        x = xp.where(mirror[:, None, None, None], x[..., ::-1], x)
    if crop_pad:
        p = crop_pad
        padded = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # (B, C, H+2p, W+2p)
        dy = xp.asarray(rng.integers(0, 2 * p + 1, size=b))
        dx = xp.asarray(rng.integers(0, 2 * p + 1, size=b))
        rows = dy[:, None] + xp.arange(h)  # (B, H)
        cols = dx[:, None] + xp.arange(w)  # (B, W)
        x = padded[
            xp.arange(b)[:, None, None, None],
            xp.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    return x
