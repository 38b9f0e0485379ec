"""``gpunet-prep info``: describe what can be read of a gpunet HDF5 file, and list the rest.

A damaged or hand-made file (a missing ``mean``, a split named but absent, unchunked
datasets, labels outside the classes, a ``format_version`` of "one", data stored in
other files) is described as far as it can be, and every problem becomes one line
naming the file in ``info["problems"]``. Labels are counted in blocks, so a long split
needs little memory; labels outside ``[0, classes)`` are reported, never dropped silently.
Data stored outside the file is never read, nor is a dataset that declares more than the
file stores for it (``gpunet.data.h5check.size_problem``: ten billion labels in 9 KB).
The images are read whole (a split up to 256 MiB, or any with ``verify``) or in a sample
of chunks (the first, the last and some between), so a corrupt compressed chunk is a
problem line naming the dataset and rows.
"""

from __future__ import annotations

import numpy as np
from gpunet.data import h5check
from gpunet.data import h5file as fmt

from .splits import SPLIT_ORDER

LABEL_BLOCK = 1 << 20  # labels read at a time


def _str(v):
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


class _Reader:
    """Root attributes converted one by one; a failure becomes a problem line."""

    def __init__(self, f, path):
        self.a, self.path, self.problems = f.attrs, str(path), []

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.path}: {text}")

    def attr(self, key, conv, expected, required=True, default=None):
        try:
            present = key in self.a
            raw = self.a[key] if present else None
        except Exception as e:  # a type the HDF5 library cannot read
            self.problem(f"root attribute {key} is unreadable ({type(e).__name__})")
            return default
        if not present:
            if required:
                self.problem(f"expected a root attribute {key} ({expected}), found none")
            return default
        try:
            return conv(raw)
        except Exception:
            self.problem(f"expected root attribute {key} to be {expected}, found {fmt.show(raw)}")
            return default


def _names(v):
    names = [_str(s) for s in np.atleast_1d(v).tolist()]
    if not names or any(not n for n in names):
        raise ValueError
    return names


def _shape(v):
    shape = tuple(int(s) for s in np.atleast_1d(v))
    if len(shape) != 3 or min(shape) < 1 or np.asarray(v).dtype.kind not in "iu":
        raise ValueError
    return shape


def _stats(name, path):
    return lambda v: [float(x) for x in fmt.channel_attr(v, name, path)]


def describe(f, path, verify: bool = False) -> dict:
    """The summary ``read_info`` returns, of an open file (opened without checks); ``verify``
    reads every chunk of the images (else a sample of them)."""
    r = _Reader(f, path)
    try:
        version = fmt.check_version(f, path)
    except ValueError as e:
        r.problems.append(str(e))
        version = r.attr("format_version", lambda v: fmt.show(np.asarray(v)), "", required=False)
    names = r.attr("class_names", _names, "a list of class names", default=[])
    shape = r.attr("image_shape", _shape, "(C, H, W) positive integers")
    info = {
        "path": str(path),
        "format_version": version,
        "dataset": r.attr("dataset", _str, "a name", default="?"),
        "class_names": names,
        "image_shape": shape,
        "mean": r.attr("mean", _stats("mean", path), "finite numbers per channel"),
        "std": r.attr("std", _stats("std", path), "finite numbers per channel"),
        "source": r.attr("source", _str, "text", required=False, default=""),
        "source_sha256": r.attr("source_sha256", _str, "text", required=False, default=""),
        "source_md5": r.attr("source_md5", _str, "text", required=False),
        "command": r.attr("command", _str, "text", required=False, default=""),
        "created": r.attr("created", _str, "text", required=False, default=""),
        "notes": r.attr(
            "notes",
            lambda v: [_str(s) for s in np.atleast_1d(v).tolist()],
            "text lines",
            required=False,
            default=[],
        ),
        "splits": {},
    }
    for key in ("mean", "std"):
        stat = info[key]
        if stat is not None and shape is not None and len(stat) != shape[0]:
            r.problem(
                f"expected root attribute {key} with {shape[0]} values (one per channel), found {len(stat)}"
            )
    if info["std"] is not None and min(info["std"]) <= 0:
        r.problem(f"expected root attribute std > 0 per channel, found {info['std']}")
    declared = r.attr(
        "splits",
        lambda v: [_str(s) for s in np.atleast_1d(v).tolist()],
        "a list of split names",
        required=False,
        default=[],
    )  # gpunet-prep's
    present, elsewhere = [], []
    for k in f.keys():
        why = fmt.storage_problem(f, k)
        if why:
            r.problem(f"{why}; not read")
            elsewhere.append(k)
        elif fmt.is_group(f.get(k)):
            present.append(k)
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    for s in sorted(set(declared) | set(present), key=lambda s: (order.get(s, 9), s)):
        if s in elsewhere:
            continue
        if s not in present:
            r.problem(
                f"split {s!r} is listed in the root attribute splits but there is no "
                f"group /{s} (found {sorted(present)})"
            )
            continue
        d = _split(f, s, names, shape, r, verify)
        if d is not None:
            info["splits"][s] = d
    if not info["splits"] and not any("split" in p for p in r.problems):
        r.problem("expected splits /train, /val, /test, found none")
    info["problems"] = r.problems
    return info


def _split(f, s, names, shape, r, verify=False):
    """One split's entry, or None (with a problem) when its datasets cannot be described."""
    g = f[s]
    file_bytes = int(f.id.get_filesize())
    for k in ("x", "y"):
        why = fmt.storage_problem(f, f"{s}/{k}") if k in g else None
        if why:
            r.problem(f"{why}; not read")
            return None
    missing = [k for k in ("x", "y") if not fmt.is_dataset(g.get(k))]
    if missing:
        r.problem(f"expected datasets /{s}/x and /{s}/y, found {sorted(g.keys())}")
        return None
    x, y = g["x"], g["y"]
    d = {
        "count": int(y.shape[0]) if y.ndim else 0,
        "x_shape": tuple(x.shape),
        "x_dtype": str(x.dtype),
        "y_shape": tuple(y.shape),
        "y_dtype": str(y.dtype),
        "chunks": tuple(x.chunks) if x.chunks else None,
        "compression": x.compression,
        "usage": _str(g.attrs["usage"]) if "usage" in g.attrs else None,
        "class_counts": {},
    }
    if x.dtype != np.uint8 or x.ndim != 4 or (shape is not None and tuple(x.shape[1:]) != shape):
        r.problem(
            f"expected /{s}/x uint8 of shape (N, {', '.join(map(str, shape or 'CHW'))}), "
            f"found {x.dtype} of shape {x.shape}"
        )
    if y.ndim != 1 or y.dtype.kind not in "iu":
        r.problem(f"expected /{s}/y integer labels of shape (N,), found {y.dtype} of shape {y.shape}")
        return d
    if x.ndim and x.shape[0] != y.shape[0]:
        r.problem(f"expected as many labels in /{s}/y as images in /{s}/x ({x.shape[0]}), found {y.shape[0]}")
    sizes = [why for why in (h5check.size_problem(ds, file_bytes) for ds in (x, y)) if why]
    for why in sizes:  # reading would take for ever (fill values) or more memory than there is
        r.problem(f"{why}; not read")
    if sizes:
        return d
    damage = h5check.unreadable_chunks(x, every=verify) if x.ndim else None
    if damage:
        r.problem(damage)
    counts, bad, first = np.zeros(len(names), np.int64), 0, None
    for a in range(0, y.shape[0], LABEL_BLOCK):
        try:
            block = y[a : a + LABEL_BLOCK].astype(np.int64)
        except Exception as e:  # a filter that is not installed, a damaged chunk
            r.problem(f"/{s}/y: cannot read labels from entry {a} ({' '.join(str(e).split())})")
            return d
        out = (block < 0) | (block >= len(names))
        if out.any():
            i = int(np.flatnonzero(out)[0])
            first = first or (a + i, int(block[i]))
            bad += int(out.sum())
        counts += np.bincount(block[~out], minlength=len(names))[: len(names)]
    d["class_counts"] = dict(zip(names, (int(c) for c in counts)))
    if bad:
        d["labels_outside"] = bad
        r.problem(
            f"/{s}/y: {bad} label(s) outside 0..{len(names) - 1} (the {len(names)} "
            f"class names), first at entry {first[0]}: {first[1]}"
        )
    return d
