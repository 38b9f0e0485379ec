"""cuDNN convolutions on the GPU, through NVIDIA's cuDNN frontend for Python.

``CudnnConvOps`` is a mixin of ``CupyOps``: its ``conv2d_forward``/``conv2d_backward`` run
cuDNN graphs (conv_fprop; conv_dgrad and conv_wgrad) when the preconditions hold, and
otherwise call ``super()``, the im2col + cuBLAS path of ``gpunet.ops.conv``, which stays the
reference. The frontend is ``import cudnn`` from the ``nvidia-cudnn-frontend`` wheel (extras
``[cuda12x]``/``[cuda13x]``, with the ``nvidia-cudnn-cu12``/``-cu13`` library): it takes raw
device addresses in a graph's variant pack and runs on the stream its handle is bound to, so
CuPy arrays pass as ``a.data.ptr`` and the handle follows CuPy's current stream.

- ``refusal(...)`` says why a call cannot take cuDNN (the frontend or the library missing,
  dtype, layout, size), or None; the im2col fallback is said once per reason in the log.
- ``plan_key(...)``: what a built plan depends on (op, dims and strides of every tensor,
  dtype, stride, padding). ``PlanCache`` keeps built plans per key, and the keys cuDNN was
  taken off (a build that raised, a self-check that failed).
- First use of a key is checked: the cuDNN result is compared with the im2col path on the
  same batch, and a key that disagrees beyond ``TOLERANCE`` is disabled (said as a warning),
  so a GPU never trains on a plan nobody has seen give the right numbers.
- Inside a CUDA-graph capture (``gpunet.train_step``) only keys already built and checked run
  (the graph step's eager warm-up builds and checks them); any other key, or an execute that
  raises there, takes the im2col path, whose products are capturable (``gemm.matmul``), and the
  key is not judged. Whether the frontend's execute is itself capturable is the first-replay
  check's to see on a GPU: a graph that differs from the eager step turns the graph off.
- Plans are built with every engine cuDNN proposes and the fastest on the first batch is
  kept (``Frontend.autotune``); float32 plans exclude tensor-core (TF32) engines.

On the emulated GPU and in CI there is no cuDNN: tests install a stand-in executor
(``CUDNN.executor``) to drive the cache, the fallbacks and the self-check.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from .. import backend
from .conv import _geometry

log = logging.getLogger("gpunet")

DTYPES = ("float32", "float16")
TOLERANCE = {"float32": 1e-3, "float16": 2e-2}  # max |cudnn - im2col| / max |im2col| on the first batch
MAX_ELEMENTS = 2**31 - 1  # cuDNN's tensor descriptors count elements in int32
MAX_PLANS = 512  # built plans kept (oldest dropped); a training run needs a handful per conv layer
ALIGNMENT = 16  # bytes: the frontend declares every tensor 16-byte aligned (its default) and never checks


def misaligned(a) -> bool:
    """True when ``a``'s device address breaks the alignment the frontend's graphs declare (a view)."""
    data = a.data  # a device array's memory pointer (NumPy arrays, in tests: the buffer's address)
    return int(data.ptr if hasattr(data, "ptr") else a.ctypes.data) % ALIGNMENT != 0


class PlanKey(NamedTuple):
    """What one built cuDNN plan serves. Dims are cuDNN's NCHW order (N, C, H, W) and
    (F, C, KH, KW); strides are the arrays' own, in elements, in the same axis order."""

    op: str  # "fprop" | "dgrad" | "wgrad"
    x_dims: tuple
    x_strides: tuple
    w_dims: tuple
    w_strides: tuple
    y_dims: tuple
    y_strides: tuple
    stride: int
    padding: int
    dtype: str


def nchw(a, layout):
    """``(dims, strides)`` of ``a`` in cuDNN's (N, C, H, W) axis order; strides in elements."""
    dims, strides = tuple(int(d) for d in a.shape), tuple(int(s) // a.itemsize for s in a.strides)
    if layout == "CNHW":
        dims, strides = (dims[1], dims[0]) + dims[2:], (strides[1], strides[0]) + strides[2:]
    return dims, strides


def _packed(dims, strides, order):
    """True when the array is dense with its axes laid out in ``order`` (outermost first)."""
    step = 1
    for axis in reversed(order):
        if dims[axis] > 1 and strides[axis] != step:
            return False
        step *= dims[axis]
    return True


def dense_layout(dims, strides):
    """``"NCHW"`` or ``"CNHW"`` when an (N, C, H, W)-ordered tensor is packed in that order, else None."""
    if _packed(dims, strides, (0, 1, 2, 3)):
        return "NCHW"
    if _packed(dims, strides, (1, 0, 2, 3)):
        return "CNHW"
    return None


def refusal(X, W, stride, padding, layout, dout=None) -> str | None:
    """Why this convolution cannot run on cuDNN (one phrase), or None when it can."""
    why = CUDNN.unavailable()
    if why:
        return why
    if X.dtype != W.dtype or (dout is not None and dout.dtype != X.dtype) or X.dtype.name not in DTYPES:
        return f"cuDNN path takes float32 or float16 throughout, got {X.dtype}/{W.dtype}"
    if not W.flags.c_contiguous:
        return "W is not contiguous"
    for name, a in (("X", X), ("dout", dout)):
        if a is not None and dense_layout(*nchw(a, layout)) is None:
            return f"{name} is not packed in NCHW or CNHW order"
        if a is not None and a.size > MAX_ELEMENTS:
            return f"{name} has more than 2**31 elements"
    for name, a in (("X", X), ("W", W), ("dout", dout)):
        if a is not None and misaligned(a):
            return f"{name} is not {ALIGNMENT}-byte aligned (an offset view)"
    if int(stride) < 1 or int(padding) < 0:
        return "stride < 1 or padding < 0"
    return None


def plan_key(op, X, W, Y, stride, padding, layout) -> PlanKey:
    """The ``PlanKey`` of ``op`` on X (the image), W (the filter) and Y (the conv output or its gradient)."""
    x, y = nchw(X, layout), nchw(Y, layout)
    w = tuple(int(d) for d in W.shape), tuple(int(s) // W.itemsize for s in W.strides)
    return PlanKey(op, *x, *w, *y, int(stride), int(padding), X.dtype.name)


def disagreement(got, ref) -> float:
    """max |got - ref| / max |ref| (on the host; 0 for two zero arrays, inf for a NaN)."""
    got, ref = backend.to_numpy(got).astype(np.float64), backend.to_numpy(ref).astype(np.float64)
    err = float(np.max(np.abs(got - ref), initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0))
    if not np.isfinite(err):
        return float("inf")
    return err / scale if scale > 0 else err


class PlanCache:
    """Built plans by ``PlanKey`` (least recently used dropped past ``max_plans``), the keys
    cuDNN was taken off with the reason, and the keys whose first result was checked."""

    def __init__(self, max_plans=MAX_PLANS):
        self.max_plans = int(max_plans)
        self._plans = OrderedDict()
        self.disabled = {}  # key -> why
        self.checked = set()

    def __len__(self):
        return len(self._plans)

    def __contains__(self, key):
        return key in self._plans

    def get(self, key, build):
        """The plan of ``key``, built by ``build()`` on first use."""
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = build()
            while len(self._plans) > self.max_plans:
                old, _ = self._plans.popitem(last=False)
                self.checked.discard(old)
        else:
            self._plans.move_to_end(key)
        return plan

    def disable(self, key, why) -> bool:
        """Take cuDNN off ``key``; True the first time (so the caller says it once)."""
        self._plans.pop(key, None)
        first = key not in self.disabled
        self.disabled[key] = why
        return first

    def clear(self):
        self._plans.clear()
        self.disabled.clear()
        self.checked.clear()


class Frontend:
    """The executor over ``import cudnn``: builds a graph per key, runs it on CuPy's current stream."""

    def __init__(self):
        import cudnn  # the optional frontend: ImportError (or a library load error) means no cuDNN

        self.cudnn = cudnn
        self.version = cudnn.backend_version()  # raises when libcudnn itself cannot be loaded
        self._handles = {}

    def handle(self):
        cp = backend.cupy_module()
        dev = cp.cuda.Device().id
        if dev not in self._handles:
            self._handles[dev] = self.cudnn.create_handle()
        h = self._handles[dev]
        self.cudnn.set_stream(h, cp.cuda.get_current_stream().ptr)
        return h

    def build(self, key: PlanKey, arrays: dict):
        """A built graph for ``key``, autotuned on ``arrays`` (name -> CuPy array)."""
        c = self.cudnn
        dt = {"float32": c.data_type.FLOAT, "float16": c.data_type.HALF}[key.dtype]
        g = c.pygraph(
            io_data_type=dt,
            intermediate_data_type=c.data_type.FLOAT,
            compute_data_type=c.data_type.FLOAT,
            handle=self.handle(),
        )

        if hasattr(key, "declare"):  # another op family's key (cudnn_norm.NormKey) declares its graph
            return self._finish(key, g, key.declare(c, g, dt), arrays)

        def tensor(name, dims, strides):
            return g.tensor(name=name, dim=list(dims), stride=list(strides), data_type=dt)

        conv = dict(
            padding=[key.padding] * 2,
            stride=[key.stride] * 2,
            dilation=[1, 1],
            compute_data_type=c.data_type.FLOAT,
        )
        X = lambda: tensor("X", key.x_dims, key.x_strides)  # noqa: E731 - only the graph's inputs are declared
        W = lambda: tensor("W", key.w_dims, key.w_strides)  # noqa: E731
        Y = lambda: tensor("Y", key.y_dims, key.y_strides)  # noqa: E731
        if key.op == "fprop":
            t = {"X": X(), "W": W()}
            t["Y"] = out = g.conv_fprop(image=t["X"], weight=t["W"], **conv)
            dims, strides = key.y_dims, key.y_strides
        elif key.op == "dgrad":
            t = {"Y": Y(), "W": W()}
            t["X"] = out = g.conv_dgrad(loss=t["Y"], filter=t["W"], **conv)
            dims, strides = key.x_dims, key.x_strides
        else:
            t = {"X": X(), "Y": Y()}
            t["W"] = out = g.conv_wgrad(image=t["X"], loss=t["Y"], **conv)
            dims, strides = key.w_dims, key.w_strides
        out.set_output(True).set_data_type(dt).set_dim(list(dims)).set_stride(list(strides))
        return self._finish(key, g, t, arrays)

    def _finish(self, key, g, t, arrays):
        """Validate graph ``g`` (tensors ``t`` by name), build its plans, autotune them on ``arrays``."""
        c, cp = self.cudnn, backend.cupy_module()
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([c.heur_mode.A, c.heur_mode.FALLBACK])
        if isinstance(key, PlanKey) and key.dtype == "float32":  # fp32 as PyTorch runs it, TF32 off
            g.deselect_numeric_notes([c.numerical_note.TENSOR_CORE])
        g.check_support()
        g.build_plans(c.build_plan_policy.ALL)
        plan = {"graph": g, "tensors": t, "workspace": None}
        self.autotune(plan, arrays)
        plan["workspace"] = cp.empty(max(int(g.get_workspace_size()), 1), cp.uint8)
        return plan

    def _pack(self, plan, arrays):
        return {plan["tensors"][k]: int(a.data.ptr) for k, a in arrays.items()}

    def autotune(self, plan, arrays, repeats=3):
        """Time every built engine on ``arrays`` and select the fastest (heuristics' choice kept on error)."""
        cp, g = backend.cupy_module(), plan["graph"]
        best = None
        try:
            count = int(g.get_execution_plan_count())
        except Exception:  # noqa: BLE001 - no plan list: keep the heuristics' choice
            return
        for i in range(count):
            try:
                ws = cp.empty(max(int(g.get_workspace_size_plan_at_index(i)), 1), cp.uint8)
                pack = self._pack(plan, arrays)
                g.execute_plan_at_index(pack, int(ws.data.ptr), index=i, handle=self.handle())  # warm-up
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                for _ in range(repeats):
                    g.execute_plan_at_index(pack, int(ws.data.ptr), index=i, handle=self.handle())
                end.record()
                end.synchronize()
                ms = cp.cuda.get_elapsed_time(start, end)
            except Exception:  # noqa: BLE001 - an engine that did not build or run is not a candidate
                continue
            if best is None or ms < best[0]:
                best = (ms, i)
        if best is not None:
            try:
                g.select_plan(best[1])
                # frontend 1.32: select_plan leaves the graph unbuilt (get_workspace_size and execute
                # refuse it); pinned, build_plans builds exactly that plan
                g.build_plans()
            except Exception:  # noqa: BLE001 - the heuristics' first choice stays selected
                pass

    def run(self, plan, arrays):
        """Execute ``plan`` on ``arrays`` (name -> CuPy array; the output written in place)."""
        ws = plan["workspace"]
        plan["graph"].execute(self._pack(plan, arrays), int(ws.data.ptr), handle=self.handle())


class Cudnn:
    """Process-wide cuDNN state: the executor (``Frontend`` on first use), the plan cache, what was said."""

    def __init__(self):
        self.executor = None  # a Frontend, or a stand-in a test installs
        self.cache = PlanCache()
        self.enabled = os.environ.get("GPUNET_CUDNN", "1") != "0"  # False: always im2col
        self._why_not = None
        self._said = set()

    def unavailable(self) -> str | None:
        """Why no cuDNN executor can run here, or None."""
        if not self.enabled:
            return "cuDNN turned off (GPUNET_CUDNN=0)"
        if self.executor is not None:
            return None
        if backend.emulated():
            return "the emulated GPU has no cuDNN"
        if self._why_not is None:
            try:
                self.executor = Frontend()
                log.info("conv2d: cuDNN %s through the cuDNN frontend", self.executor.version)
                return None
            except Exception as e:  # noqa: BLE001 - ImportError, or the library failing to load
                self._why_not = f"cuDNN frontend unusable ({type(e).__name__}: {e})".replace("\n", " ")
        return self._why_not

    def say_fallback(self, why, path="conv2d: im2col + cuBLAS path"):
        """Log once per distinct reason that an op family (``path``) takes its hand-written kernels."""
        if (path, why) not in self._said:
            self._said.add((path, why))
            log.info("%s: %s", path, why)

    def attempt(self, key, arrays, reference):
        """Run ``key`` on ``arrays`` through cuDNN (outputs written in place); True when it ran.

        reference: ``() -> output`` by im2col (or ``{name: output}`` for a key with several), for the
        first-use check; on disagreement the key is disabled and False returned (the caller then
        takes the reference's result).
        """
        if key in self.cache.disabled:
            return False
        if _capturing() and key not in self.cache.checked:
            # inside a CUDA-graph capture only plans built and checked before it (the graph step's
            # warm-up) run: nothing is built, autotuned (a host sync) or checked there
            return False
        try:
            plan = self.cache.get(key, lambda: self.executor.build(key, arrays))
            self.executor.run(plan, arrays)
        except Exception as e:  # noqa: BLE001 - an unsupported graph, or a frontend error: im2col
            if _capturing():  # inside a CUDA-graph capture: im2col this time, the key is not judged
                return False
            self._disable(key, f"{type(e).__name__}: {e}".replace("\n", " ")[:300], logging.INFO)
            return False
        if key not in self.cache.checked:
            want = reference()
            if not isinstance(want, dict):
                want = {{"fprop": "Y", "dgrad": "X", "wgrad": "W"}[key.op]: want}
            err = max(disagreement(arrays[name], ref) for name, ref in want.items())
            if not err <= TOLERANCE[key.dtype]:
                what = getattr(key, "reference_name", "im2col")
                self._disable(
                    key, f"first-use check: differs from {what} by {err:.2g} (relative)", logging.WARNING
                )
                return False
            self.cache.checked.add(key)
        return True

    def _disable(self, key, why, level):
        if self.cache.disable(key, why):
            if hasattr(key, "describe"):
                log.log(
                    level,
                    "%s: cuDNN off for %s: %s; reference kernels instead",
                    key.log_name,
                    key.describe(),
                    why,
                )
                return
            log.log(
                level,
                "conv2d: cuDNN off for %s %s (x %s, w %s): %s; im2col instead",
                key.op,
                key.dtype,
                key.x_dims,
                key.w_dims,
                why,
            )


def _capturing() -> bool:
    cp = backend.cupy_module()
    try:
        return bool(cp is not None and cp.cuda.get_current_stream().is_capturing())
    except Exception:  # noqa: BLE001 - a stream without the query: assume not capturing
        return False


CUDNN = Cudnn()


class CudnnConvOps:
    """The cuDNN overrides of ``conv2d_forward``/``conv2d_backward`` (a mixin before ``NumpyOps``).

    Each call tries the arrays as they are (their strides in the plan key), then, when cuDNN
    refused a (C, N, H, W) memory order, NCHW-packed copies (``_candidates``); the first that
    runs and passes its check wins, else the im2col path of ``super()``.
    """

    def conv2d_forward(self, X, W, b, stride=1, padding=0, cache=None, layout="NCHW"):
        why = refusal(X, W, stride, padding, layout)
        if why:
            CUDNN.say_fallback(why)
            return super().conv2d_forward(X, W, b, stride, padding, cache, layout)
        xp, ref = backend.get_array_module(X), []

        def reference():
            if not ref:
                ref.append(super(CudnnConvOps, self).conv2d_forward(X, W, b, stride, padding, cache, layout))
            return ref[0] - _bias(b, layout)

        for (x,), lay in _candidates(layout, X):
            out = xp.empty(_out_shape(x, W, stride, padding, lay), X.dtype)
            check = reference if lay == layout else (lambda: _swap(reference()))
            if CUDNN.attempt(
                plan_key("fprop", x, W, out, stride, padding, lay), {"X": x, "W": W, "Y": out}, check
            ):
                out += _bias(b, lay)
                return out if lay == layout else xp.ascontiguousarray(_swap(out))
            if ref:  # its first-use check failed: the im2col result is at hand
                return ref[0]
        return super().conv2d_forward(X, W, b, stride, padding, cache, layout)

    def conv2d_backward(self, dout, X, W, b, stride=1, padding=0, cache=None, need_dx=True, layout="NCHW"):
        why = refusal(X, W, stride, padding, layout, dout)
        if why or tuple(dout.shape) != _out_shape(X, W, stride, padding, layout):
            if why:
                CUDNN.say_fallback(why)
            return super().conv2d_backward(dout, X, W, b, stride, padding, cache, need_dx, layout)
        xp, ref = backend.get_array_module(dout), []

        def reference(i, swap=False):
            def get():
                if not ref:
                    ref.append(
                        super(CudnnConvOps, self).conv2d_backward(
                            dout, X, W, b, stride, padding, cache, True, layout
                        )
                    )
                return _swap(ref[0][i]) if swap else ref[0][i]

            return get

        for (x, dy), lay in _candidates(layout, X, dout):
            dW = xp.empty(W.shape, W.dtype)
            key = plan_key("wgrad", x, W, dy, stride, padding, lay)
            if not CUDNN.attempt(key, {"X": x, "Y": dy, "W": dW}, reference(1)):
                if ref:
                    return ref[0]
                continue
            dX = None
            if need_dx:
                dx = xp.empty(x.shape, x.dtype)  # packed, in the axis order of this candidate
                key = plan_key("dgrad", dx, W, dy, stride, padding, lay)
                if CUDNN.attempt(key, {"X": dx, "W": W, "Y": dy}, reference(0, swap=lay != layout)):
                    dX = dx if lay == layout else xp.ascontiguousarray(_swap(dx))
                else:
                    dX = reference(0)()  # im2col's dX (computed by the check, or now)
            db = dout.sum(axis=(1, 2, 3) if layout == "CNHW" else (0, 2, 3))
            return dX, dW, xp.ascontiguousarray(db.astype(W.dtype, copy=False))
        return super().conv2d_backward(dout, X, W, b, stride, padding, cache, need_dx, layout)


def _candidates(layout, *arrays):
    """``(arrays, layout)`` to try: as given; then, if any is packed (C, N, H, W), NCHW-packed copies."""
    yield arrays, layout
    if layout == "CNHW" and any(dense_layout(*nchw(a, layout)) == "CNHW" for a in arrays):
        xp = backend.get_array_module(arrays[0])
        yield tuple(xp.ascontiguousarray(_swap(a)) for a in arrays), "NCHW"


def _swap(a):
    return a.transpose(1, 0, 2, 3)


def _bias(b, layout):
    return b.reshape(-1, 1, 1, 1) if layout == "CNHW" else b.reshape(1, -1, 1, 1)


def _out_shape(X, W, stride, padding, layout):
    N, C, F, KH, KW, Ho, Wo = _geometry(X, W, stride, padding, layout)
    return (F, N, Ho, Wo) if layout == "CNHW" else (N, F, Ho, Wo)
