"""Philox4x32-10 dropout stream (``gpunet.ops.philox``): the NumPy twin against Random123's published
known answers, and the device-side offset (the CUDA text against the twin bit for bit, run on the
CPU: tests/kernel_cpu_philox.py, collected by test_kernel_cpu.py): consecutive calls draw
different masks, a re-keyed stream repeats."""

import numpy as np
import pytest

from gpunet import backend
from gpunet.ops import philox
from gpunet.testing import emulated

needs_gxx = pytest.mark.skipif(emulated.available() is not None, reason=str(emulated.available()))

# Random123 tests/kat_vectors, "philox4x32 10" lines: counter[4], key[2] -> result[4]
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("ctr, key, want", KAT)
def test_numpy_twin_gives_random123_known_answers(ctr, key, want):
    assert philox.philox4x32_10(ctr, key)[:, 0].tolist() == want


def test_numpy_twin_is_elementwise_over_counters():
    ctr = np.array([[0, 0xFFFFFFFF, 0x243F6A88], [0, 0xFFFFFFFF, 0x85A308D3], [0, 0xFFFFFFFF, 0x13198A2E]])
    ctr = [ctr[0], ctr[1], ctr[2], np.array([0, 0xFFFFFFFF, 0x03707344])]
    got = philox.philox4x32_10(ctr, [0, 0])
    assert got[:, 0].tolist() == KAT[0][2]
    assert got[:, 1].tolist() == philox.philox4x32_10([0xFFFFFFFF] * 4, [0, 0])[:, 0].tolist()


def test_threshold_keeps_one_minus_p():
    assert philox.threshold(0.0) == 0 and philox.threshold(0.5) == 2**31
    assert philox.threshold(1 - 1e-12) == 2**32 - 1
    kept = philox.keep_mask(200_000, 99, 0, 0.25).mean()
    assert abs(kept - 0.75) < 0.005


@needs_gxx
def test_device_stream_advances_on_the_device_and_repeats_when_rekeyed():
    with backend.using("emulated") as xp:
        s = philox.DeviceStream(xp)
        s.set(2024, 0)
        a, b = backend.to_numpy(s.words(64)), backend.to_numpy(s.words(64))
        assert s.host_state() == (2024, 2)
        assert not np.array_equal(a, b)  # consecutive offsets: other bits
        np.testing.assert_array_equal(a, philox.dropout_words(64, 2024, 0))
        np.testing.assert_array_equal(b, philox.dropout_words(64, 2024, 1))
        rng = xp.random.default_rng(5)
        s.follow(rng)
        key = s.host_state()[0]
        assert s.host_state() == (key, 0) and key != 2024
        s.follow(rng)  # the same generator: nothing drawn, nothing reset
        s.words(4)
        assert s.host_state() == (key, 1)
        s.follow(xp.random.default_rng(5), force=True)  # the same seed: the same key
        assert s.host_state() == (key, 0)


@needs_gxx
def test_gpu_dropout_layer_uses_the_counter_stream():
    """The (emulated) GPU's in-place dropout is the Philox kernel: masks match the twin, and two calls
    from the same generator differ."""
    from gpunet.layers import dropout_forward

    with backend.using("emulated") as xp:
        rng = xp.random.default_rng(3)
        st = philox.stream(xp).follow(rng, force=True)
        key, off = st.host_state()
        h = xp.ones((8, 33), np.float32)
        dropout_forward(h, 0.4, rng=rng, out=h)
        kept1 = backend.to_numpy(h) != 0
        np.testing.assert_array_equal(kept1.ravel(), philox.keep_mask(h.size, key, off, 0.4))
        np.testing.assert_allclose(backend.to_numpy(h)[kept1], np.float32(1 / 0.6))
        h2 = xp.ones((8, 33), np.float32)
        dropout_forward(h2, 0.4, rng=rng, out=h2)
        kept2 = backend.to_numpy(h2) != 0
        assert not np.array_equal(kept1, kept2)
        np.testing.assert_array_equal(kept2.ravel(), philox.keep_mask(h.size, key, off + 1, 0.4))
