"""NVRTC compiles every CUDA source of gpunet, as CuPy would, for sm_80 and sm_90 (no GPU needed).

The kernels are discovered from ``kernels.SOURCES`` after importing the packages
that declare them, so a new kernel is covered without touching this file. The
tests skip when CuPy or the NVRTC wheel is missing, unless ``GPUNET_REQUIRE_NVRTC=1``
(set by ``.ci/run``, which installs both), where they fail instead.
"""

import os

import numpy as np
import pytest

import gpunet.layers  # noqa: F401  (declares the layer kernels)
import gpunet.optim  # noqa: F401  (declares the optimizer kernels)
from gpunet import cuda_sources as kernels, nvrtc

pytestmark = pytest.mark.nvrtc
ARCHS = ("80", "90")

_why = nvrtc.unavailable()
if _why is not None:
    if os.environ.get("GPUNET_REQUIRE_NVRTC") == "1":
        raise RuntimeError(
            f"GPUNET_REQUIRE_NVRTC=1 but {_why}; install cupy-cuda13x=={nvrtc.PINNED_CUPY} "
            "and nvidia-cuda-nvrtc"
        )
    pytest.skip(_why, allow_module_level=True)


def _all_variants():
    return [
        pytest.param(v, id=f"{v.source}[{v.label}]")
        for src in kernels.SOURCES.values()
        for v in nvrtc.variants(src)
    ]


def test_registry_is_not_empty():
    # the layer and optimizer modules above declare at least these
    assert {
        "bias_add",
        "bias_relu",
        "relu_bwd",
        "philox_dropout_float32",
        "softmax_xent",
        "sgd",
        "adam",
    } <= set(kernels.SOURCES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", _all_variants())
def test_source_compiles(variant, arch):
    cubin = nvrtc.compile(variant, arch)
    assert cubin[:4] == b"\x7fELF"  # a cubin is an ELF image
    assert variant.function.encode() in cubin


def test_every_elementwise_kernel_has_float32_and_float64():
    for src in kernels.SOURCES.values():
        if src.kind != "elementwise":
            continue
        labels = [v.label for v in nvrtc.variants(src)]
        assert any("T=float32" in lab for lab in labels) and any("T=float64" in lab for lab in labels), (
            src.name
        )


def test_expansion_follows_the_call_site_layout():
    src = kernels.SOURCES["sgd"]  # lr is passed as a NumPy scalar
    code = nvrtc.expand(src, {"T": np.dtype(np.float32)})
    assert "const float lr" in code and "CArray<float, 1, 1, 1> _raw_w" in code
    assert "T &w = _raw_w[_ind.get()];" in code and "w -= lr * dw" in code
    bias = nvrtc.expand(kernels.SOURCES["bias_add"], {"T": np.dtype(np.float64)}, broadcast=("b",))
    assert "const CArray<double, 2, 0, 1> _raw_b" in bias  # broadcast row: 2-d, not contiguous
    labels = {v.label for v in nvrtc.variants(kernels.SOURCES["softmax_xent"])}
    assert {"S=int32,T=float32,flat", "S=int64,T=float64,flat"} <= labels


def test_broken_source_is_rejected_with_the_compiler_message():
    good = nvrtc.variants(kernels.SOURCES["sgd"])[0]
    broken = nvrtc.Variant(
        good.source, good.label, good.code.replace("w -= lr * dw", "w -= lr * undeclared_dw"), good.function
    )
    with pytest.raises(
        nvrtc.NvrtcError, match=r"(?s)'sgd'.*sm_80.*identifier \"undeclared_dw\" is undefined"
    ):
        nvrtc.compile(broken, "80")


def test_wrong_scalars_declaration_is_reported():
    src = kernels.CudaSource("bad", "elementwise", "y = x * k", "T x, T k", "T y", scalars=("q",))
    with pytest.raises(nvrtc.NvrtcError, match="scalars=.*'q'"):
        nvrtc.variants(src)


def test_raw_kernel_is_compiled_as_written():
    src = kernels.CudaSource(
        "raw_demo",
        "raw",
        'extern "C" __global__ void demo(float* x) { x[threadIdx.x] = 1; }',
        function="demo",
    )
    (v,) = nvrtc.variants(src)
    assert v.code == src.body and b"demo" in nvrtc.compile(v, "90")
