"""CPU-execution cases of the Philox dropout kernels (``gpunet.ops.philox``) for
tests/kernels/test_kernel_cpu.py: the CUDA text, run thread by thread by g++, against the NumPy
twin bit for bit."""

import numpy as np

from gpunet.ops import philox
from gpunet.testing import kernel_cpu

STATES = [(1, 0, 0), (13, 2**40 + 7, 3), (1030, 2**64 - 1, 2**33 + 5)]  # (n, key, offset)


def case_words(dt, rng):
    for n, key, offset in STATES:
        out = np.zeros(n, np.uint32)
        state = np.array([key, offset], np.uint64)
        args = ["unsigned int*", "long long", "unsigned long long*"]
        kernel_cpu.run_raw(
            philox.WORDS.source, args, philox._grid(n)[0], philox.BLOCK, out, np.int64(n), state
        )
        np.testing.assert_array_equal(out, philox.dropout_words(n, key, offset))
        assert state.tolist() == [key, offset]  # the words kernel reads the state only


def case_dropout(dt, rng):
    ct = "float" if dt == np.float32 else "double"
    for n, key, offset in STATES:
        for p in (0.0, 0.3, 0.5):
            x = (rng.random(n) + 0.5).astype(dt)
            h = x.copy()
            state = np.array([key, offset], np.uint64)
            scale = dt(1 / (1 - p))
            kernel_cpu.run_raw(
                philox.DROPOUT[np.dtype(dt).name].source,
                [f"{ct}*", "long long", "unsigned long long*", "unsigned int", ct],
                philox._grid(n)[0],
                philox.BLOCK,
                h,
                np.int64(n),
                state,
                philox.threshold(p),
                scale,
            )
            want = np.where(philox.keep_mask(n, key, offset, p), x * scale, dt(0))
            np.testing.assert_array_equal(h, want)


def case_advance(dt, rng):
    state = np.array([5, 2**32 - 1], np.uint64)
    kernel_cpu.run_raw(philox.ADVANCE.source, ["unsigned long long*"], 3, 64, state)  # one thread adds
    assert state.tolist() == [5, 2**32]


PHILOX_CASES = {
    "philox_words": case_words,
    "philox_dropout_float32": case_dropout,
    "philox_dropout_float64": case_dropout,
    "philox_advance": case_advance,
}
