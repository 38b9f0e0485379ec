"""Loading CIFAR-10 python batches without letting the pickle run code.

A pickle can name any importable callable and call it while loading, so a
crafted ``data_batch_1`` could run ``os.system``. :class:`RestrictedUnpickler`
resolves only the few globals a numpy-array pickle needs (array and dtype
reconstruction, and ``_codecs.encode`` limited to latin-1, which Python 3
writes for ``bytes`` under protocol 2); anything else raises
:class:`pickle.UnpicklingError` before it is called.
"""
from __future__ import annotations

import codecs
import copyreg
import io
import pickle

import numpy as np

try:  # numpy >= 2 keeps the array-reconstruction helpers in numpy._core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it: latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1", errors)


_MULTIARRAY = {"_reconstruct": _multiarray._reconstruct, "scalar": _multiarray.scalar}
_ALLOWED = {
    **{("numpy.core.multiarray", k): v for k, v in _MULTIARRAY.items()},
    **{("numpy._core.multiarray", k): v for k, v in _MULTIARRAY.items()},
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "object"): object,
    ("__builtin__", "object"): object,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only numpy-array reconstruction."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR-10 batch") from None


def loads(data: bytes):
    """Unpickle ``data`` (Python-2 or 3 pickle) with bytes keys kept as bytes."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
