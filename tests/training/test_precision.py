"""``--precision fp32|tf32|bf16`` (``gpunet.ops.gemm``): the rounding of the emulated products against
PyTorch's bfloat16 conversion (an independent implementation), the products of the emulated GPU in
each precision, the CLI refusal on NumPy, and a bf16 training run reaching the fp32 run's accuracy.
The real compute types (cuBLAS tensor cores) are checked on a GPU only (scripts/gpu_check.sh)."""

import os

import numpy as np
import pytest

from gpunet import backend
from gpunet.ops import gemm
from gpunet.testing import emulated

emulated_only = pytest.mark.skipif(emulated.available() is not None, reason=str(emulated.available()))


def _values():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(4000).astype(np.float32) * np.float32(1e3)
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 2**-130, 65504.0, np.inf, -np.inf, 0.0, -0.0])
    return np.concatenate([a, ties.astype(np.float32)])


def test_bf16_rounding_matches_pytorch():
    torch = pytest.importorskip("torch")
    a = _values()
    want = torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(gemm.round_to(a, "bf16"), want)
    assert np.isnan(gemm.round_to(np.array([np.nan], np.float32), "bf16")).all()


def test_tf32_rounding_keeps_ten_mantissa_bits():
    a = _values()[:4000]
    r = gemm.round_to(a, "tf32")
    assert not (r.view(np.uint32) & 0x1FFF).any()  # the low 13 bits are gone
    np.testing.assert_allclose(r, a, rtol=2**-11)
    assert gemm.round_to(a, "fp32") is a and gemm.round_to(a.astype(np.float64), "bf16").dtype == np.float64


@emulated_only
@pytest.mark.parametrize("name", gemm.PRECISIONS)
def test_emulated_products_compute_in_the_precision(name):
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((16, 40)).astype(np.float32), rng.standard_normal((40, 8)).astype(np.float32)
    want = gemm.round_to(A, name) @ gemm.round_to(B, name)
    with backend.using("emulated") as xp, gemm.using_precision(name):
        got = backend.to_numpy(gemm.matmul(xp, xp.asarray(A), xp.asarray(B).T.copy().T))  # B as an F view
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if name != "fp32":
        assert np.abs(got - A @ B).max() > 1e-4  # the rounding shows: the test can fail


def test_reduced_precision_is_refused_on_numpy_in_one_line(tmp_path, capsys):
    from gpunet.cli import train

    out = tmp_path / "run"
    rc = train.main(["cifar10", "--backend", "numpy", "--precision", "bf16", "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --precision bf16:") and "NumPy" in err[0]
    assert not out.exists() and gemm.precision() == "fp32"
    assert (
        gemm.precision_refusal("bf16", "emulated") is None and gemm.precision_refusal("fp32", "numpy") is None
    )


@pytest.mark.parametrize(
    "dev", [pytest.param("emulated", marks=pytest.mark.emulated), pytest.param("cupy", marks=pytest.mark.gpu)]
)
def test_bf16_training_reaches_the_fp32_accuracy(dev):
    """The same FC net and data trained in fp32 and in bf16 products (Solver, CUDA-graph step; on the
    emulated GPU and on a real one): the bf16 run's validation accuracy is within 0.5 point of fp32's."""
    if dev == "emulated" and emulated.available():
        pytest.skip(emulated.available())
    if dev == "cupy" and not backend.gpu_available():
        pytest.skip(f"no usable GPU: {backend.gpu_unavailable_reason()}")
    from gpunet.model import FullyConnectedNet
    from gpunet.solver import Solver

    rng = np.random.default_rng(3)
    centers = rng.standard_normal((4, 20)).astype(np.float32) * 1.5
    y = rng.integers(0, 4, 1200)
    X = (centers[y] + rng.standard_normal((1200, 20)).astype(np.float32)).astype(np.float32)
    acc = {}
    for name in ("fp32", "bf16"):
        with backend.using(dev), gemm.using_precision(name):
            model = FullyConnectedNet([64, 32], input_dim=20, num_classes=4, dropout=0.1, seed=0)
            data = {"X_train": X[:1000], "y_train": y[:1000], "X_val": X[1000:], "y_val": y[1000:]}
            s = Solver(
                model,
                data,
                update_rule="adam",
                optim_config={"learning_rate": 3e-3},
                num_epochs=4,
                batch_size=100,
                verbose=False,
                seed=0,
            )
            s.train()
            acc[name] = float(s.val_acc_history[-1])
    assert acc["fp32"] > 0.8, acc
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.005, acc


# the FC bench's forms on the CPU: tests/training/test_fast.py::test_bench_compares_with_torch


def test_torch_side_of_a_bf16_bench_runs_under_autocast():
    """Every timed PyTorch step of a bf16 run (and its capture or compilation) runs in bfloat16
    autocast: the products come out bf16, the loss and the weights stay float32."""
    torch = pytest.importorskip("torch")
    from gpunet.benchmark import fc

    net = torch.nn.Linear(6, 3)
    seen = []
    step = fc.under(
        lambda: fc.torch_precision(torch, "bf16", "cpu"), lambda: seen.append(net(torch.ones(2, 6)))
    )
    step()
    assert seen[0].dtype == torch.bfloat16 and net.weight.dtype == torch.float32
    with fc.torch_precision(torch, "fp32", "cpu"):
        assert net(torch.ones(2, 6)).dtype == torch.float32


def test_a_commands_precision_reaches_spawned_workers_and_ends_with_it(monkeypatch):
    from gpunet.cli import common

    monkeypatch.delenv(gemm.ENV, raising=False)
    seen = {}

    def body(args):
        common.setup_precision("bf16", "auto")  # gpunet-tune --workers N: the workers choose the backend
        seen["env"], seen["precision"] = os.environ.get(gemm.ENV), gemm.precision()

    assert common.run(body, None) == 0
    assert seen == {"env": "bf16", "precision": "bf16"}
    assert gemm.ENV not in os.environ and gemm.precision() == "fp32"
    with pytest.raises(common.UserError, match="--precision tf32: .*NumPy"):
        common.setup_precision("tf32", "cpu")


class _ColumnMajorBlas:
    """``cublasGemmEx`` as the cuBLAS documentation defines it (column-major, op(A) m x k, op(B) k x n,
    C m x n with leading dimensions), on host memory: checks gemm's row-major mapping without a GPU."""

    calls = 0

    @staticmethod
    def _read(ptr, ld, rows, cols, dtype):
        buf = np.ctypeslib.as_array((ctypes_type(dtype) * (ld * (cols - 1) + rows)).from_address(ptr))
        return np.lib.stride_tricks.as_strided(buf, (rows, cols), (buf.itemsize, ld * buf.itemsize)).copy()

    def cublasGemmEx(self, h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, comp, algo):
        type(self).calls += 1
        dt = np.float32 if at == 0 else np.float64
        a = self._read(A, lda, *((m, k) if ta == 0 else (k, m)), dt)
        b = self._read(B, ldb, *((k, n) if tb == 0 else (n, k)), dt)
        c = (a if ta == 0 else a.T) @ (b if tb == 0 else b.T)
        out = np.ctypeslib.as_array((ctypes_type(dt) * (ldc * (n - 1) + m)).from_address(C))
        for j in range(n):
            out[j * ldc : j * ldc + m] = c[:, j]
        return 0

    def cublasGemmStridedBatchedEx(
        self, h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, *rest
    ):
        """``cublasGemmEx`` on each of ``count`` operand triples, ``stride`` elements apart."""
        ct, ldc, sc, count, comp, algo = rest
        size = 4 if at == 0 else 8
        for r in range(count):
            args = (A + r * sa * size, at, lda, B + r * sb * size, bt, ldb, beta, C + r * sc * size, ct, ldc)
            self.cublasGemmEx(h, ta, tb, m, n, k, alpha, *args, comp, algo)
        return 0


def ctypes_type(dtype):
    import ctypes

    return ctypes.c_float if np.dtype(dtype) == np.float32 else ctypes.c_double


@emulated_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_cublas_call_maps_row_major_products(monkeypatch, dtype):
    """The (op, ld) of every operand layout the layers use (C-contiguous, a transposed C-contiguous
    array, a row slice) through the documented column-major GEMM gives A @ B."""
    monkeypatch.setattr(gemm, "_libcublas", lambda: _ColumnMajorBlas())
    rng = np.random.default_rng(0)
    with backend.using("emulated") as xp:
        base = {s: xp.asarray(rng.standard_normal(s).astype(dtype)) for s in [(7, 5), (5, 3), (3, 5), (9, 5)]}
        cases = [
            (base[(7, 5)], base[(5, 3)]),  # X @ W
            (base[(7, 5)], base[(3, 5)].T),  # dout @ W.T
            (base[(9, 5)].T, base[(9, 5)][:, :3].copy()),  # X.T @ dout
            (base[(9, 5)][2:6], base[(5, 3)]),  # a row slice: C-contiguous with an offset
        ]
        for A, B in cases:
            out = xp.empty((A.shape[0], B.shape[1]), dtype)
            gemm._gemm(0, A, B, out)
            np.testing.assert_allclose(
                backend.to_numpy(out), backend.to_numpy(A) @ backend.to_numpy(B), rtol=1e-6
            )
    assert _ColumnMajorBlas.calls >= 4
    assert gemm.direct_refusal(base[(7, 5)][:, ::2], base[(3, 5)].T[:3], None) is not None  # strided: refused


@emulated_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_row_dots_map_to_one_strided_batched_call(monkeypatch, dtype):
    """Batch norm's per-channel sums of products in a CUDA graph's step (``gemm.rowdot``): the strided
    batched call as cuBLAS documents it gives einsum's row dots, and on the emulated GPU the bound path
    equals the eager einsum bit for bit."""
    monkeypatch.setattr(gemm, "_libcublas", lambda: _ColumnMajorBlas())
    rng = np.random.default_rng(1)
    with backend.using("emulated") as xp:
        a, b = (xp.asarray(rng.standard_normal((6, 11)).astype(dtype)) for _ in range(2))
        out = xp.empty(6, dtype)
        gemm._rowdot(0, a, b, out)
        want = np.einsum("ij,ij->i", backend.to_numpy(a), backend.to_numpy(b))
        np.testing.assert_allclose(backend.to_numpy(out), want, rtol=1e-6)
        s = xp.cuda.Stream()
        with s, gemm.bound(s):
            np.testing.assert_array_equal(backend.to_numpy(gemm.rowdot(xp, a, b)), want)
            strided = gemm.rowdot(xp, a[:, ::2], b[:, ::2])  # not contiguous: the elementwise form
        sa, sb = backend.to_numpy(a[:, ::2]), backend.to_numpy(b[:, ::2])
        np.testing.assert_allclose(backend.to_numpy(strided), (sa * sb).sum(1), rtol=1e-6)


def test_cublas_handle_error_means_no_direct_path(monkeypatch):
    """CuPy's handle failing (a driver mismatch raises CUBLASError / CUDARuntimeError, RuntimeErrors, not
    OSError) makes the direct path unavailable, said by ``capture_refusal``, instead of escaping."""

    class _Device:
        @staticmethod
        def get_cublas_handle():
            raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")

    class _Cuda:
        device = _Device

    class _Cupy:
        cuda = _Cuda

    monkeypatch.setattr(gemm, "_lib", None)
    monkeypatch.setattr(backend, "cupy_module", lambda: _Cupy)
    monkeypatch.setattr(backend, "emulated", lambda: False)
    assert gemm._libcublas() is None
    assert "libcublas" in gemm.capture_refusal()

    class _Stream:
        ptr = 1234

    with gemm.bound(_Stream()):  # said, not raised: nothing is bound, products take xp.matmul
        assert gemm._bound is None


def test_the_libcublas_of_cupys_cuda_is_the_one_called():
    cu13, cu12 = "/v/nvidia/cu13/lib/libcublas.so.13", "/v/nvidia/cublas/lib/libcublas.so.12"
    assert gemm.pick_libcublas([cu13], 13) == cu13
    assert gemm.pick_libcublas([cu12, cu13], 13) == cu13  # PyTorch's loaded too: not sorted()[0]
    assert gemm.pick_libcublas([cu12, cu13], 12) == cu12
    assert gemm.pick_libcublas([cu12, "/other/libcublas.so.12"], 13) is None  # ambiguous: no direct path
