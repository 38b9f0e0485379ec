"""Loading CIFAR-10 python batches without letting the pickle run code.

A pickle can name any importable callable and call it while loading, so a
crafted ``data_batch_1`` could run ``os.system``. :class:`RestrictedUnpickler`
resolves only the few globals a numpy-array pickle needs (array and dtype
reconstruction, and ``_codecs.encode`` limited to latin-1, which Python 3
writes for ``bytes`` under protocol 2); anything else raises
:class:`pickle.UnpicklingError` before it is called.

Its work is bounded too: at most ``MAX_OPS`` opcodes (a real batch has about 90 000),
and dict keys must be str, bytes or int: a key built from nested tuples that share
each other costs exponential time to hash, so a small pickle could run for hours.
It is the pure-Python unpickler (``pickle._Unpickler``), whose opcodes can be
counted; on a CIFAR-10 batch it is within 20% of the C one (the latin-1 decode of
the pixel bytes dominates both).
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


MAX_OPS = 2_000_000
_KEY_TYPES = (str, bytes, int)


def _counted(load):
    def op(self):
        self.ops += 1
        if self.ops > MAX_OPS:
            raise pickle.UnpicklingError(f"more than {MAX_OPS} pickle opcodes; not a CIFAR-10 batch")
        load(self)

    return op


def _refuse(self):
    raise pickle.UnpicklingError("sets are not part of a CIFAR-10 batch")


class RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler whose ``find_class`` admits only numpy-array reconstruction, that counts
    its opcodes and takes only str, bytes or int dict keys (and no sets)."""

    ops = 0

    def _check_keys(self, keys):
        for k in keys:
            if type(k) not in _KEY_TYPES:
                raise pickle.UnpicklingError(
                    f"a dict key of type {type(k).__name__}; not part of a CIFAR-10 batch"
                )

    def load_setitem(self):
        self._check_keys(self.stack[-2:-1])
        pickle._Unpickler.load_setitem(self)

    def load_setitems(self):
        self._check_keys(self.stack[0::2])  # the items pushed since the MARK
        pickle._Unpickler.load_setitems(self)

    def load_dict(self):
        self._check_keys(self.stack[0::2])
        pickle._Unpickler.load_dict(self)

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: not part of a CIFAR-10 batch"
            ) from None


_OWN = {
    pickle.SETITEM[0]: RestrictedUnpickler.load_setitem,
    pickle.SETITEMS[0]: RestrictedUnpickler.load_setitems,
    pickle.DICT[0]: RestrictedUnpickler.load_dict,
    pickle.EMPTY_SET[0]: _refuse,
    pickle.ADDITEMS[0]: _refuse,
    pickle.FROZENSET[0]: _refuse,
}
RestrictedUnpickler.dispatch = {k: _counted(_OWN.get(k, f)) for k, f in pickle._Unpickler.dispatch.items()}


def loads(data: bytes):
    """Unpickle ``data`` (Python-2 or 3 pickle) with bytes keys kept as bytes."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
