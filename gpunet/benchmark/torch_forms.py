"""PyTorch at its best for a comparison: every form of its training step that runs here.

Forms of the same seeded net and Adam (``FORMS``):

- ``default``, ``foreach``, ``fused``: eager steps with that optimizer implementation
  (``timing.torch_optimizer``); ``forloop``: eager with ``foreach=False``, the per-parameter loop;
- ``cudagraph``: the whole step (zero_grad, forward, loss, backward, Adam with
  ``capturable=True``) captured once with ``torch.cuda.graph`` and replayed; each step copies
  its batch into the graph's static inputs, as gpunet's graph step does. CUDA only;
- ``compile``: the eager step under ``torch.compile``, compiled within ``COMPILE_TIMEOUT_S``.

A form that cannot run here is skipped with its reason (``skipped``), never silently.
``prepare_cudnn`` sets ``torch.backends.cudnn.benchmark`` (autotuned convolutions) and the TF32
switches, so both libraries compute in the same precision.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from .fc import TorchCase, torch_step
from .timing import torch_optimizer

FORMS = ("default", "foreach", "fused", "forloop", "cudagraph", "compile")
COMPILE_TIMEOUT_S = (
    300.0  # torch.compile of the step (tracing, inductor) may take this long, then it is skipped
)


def prepare_cudnn(torch, device: str, tf32: bool = False):
    """On CUDA: cuDNN autotunes each convolution shape once (``benchmark``); TF32 as ``tf32`` for both
    cuDNN and matmuls (gpunet's float32 cuDNN plans exclude tensor-core engines likewise)."""
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)


class Timeout(Exception):
    """``time_box`` ran out."""


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise ``Timeout`` in the block after ``seconds`` (SIGALRM: main thread only; elsewhere no limit)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise Timeout(f"took more than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class GraphCase(TorchCase):
    """The whole training step replayed from one CUDA graph (``torch.cuda.graph``)."""

    WARMUP = 3  # eager steps on a side stream before capture, as PyTorch's documentation does

    def __init__(self, torch, net, opt, X, y, device: str):
        super().__init__(torch, net, opt, X, y, device)
        self.static_X, self.static_y = self.X[0].clone(), self.y[0].clone()
        net.train()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                torch_step(torch, net, opt, self.static_X, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = torch_step(torch, net, opt, self.static_X, self.static_y)

    def train_step(self):
        i = self.i = (self.i + 1) % len(self.X)
        self.static_X.copy_(self.X[i])
        self.static_y.copy_(self.y[i])
        self.graph.replay()
        self.loss = self.static_loss


def torch_forms(
    torch, make_net, opt_cls, opt_kw, X, y, device, compile=True, compile_timeout=COMPILE_TIMEOUT_S
) -> tuple[dict, dict]:
    """``({form: case}, {form: why skipped})`` for every form in ``FORMS`` (each with a fresh seeded net).

    compile: try ``torch.compile`` (False: skipped as "not asked for"); its first steps run inside
    ``time_box(compile_timeout)``, and any failure skips the form with the error's first line.
    """
    cases, skipped = {}, {}
    for form in FORMS:
        if form == "compile" and not compile:
            skipped[form] = "not asked for (--compile)"
            continue
        if form == "cudagraph" and device != "cuda":
            skipped[form] = "not on CPU (CUDA graphs need a GPU)"
            continue
        net = make_net().to(device)
        kind = {"forloop": "default", "compile": "default", "cudagraph": "default"}.get(form, form)
        extra = {"forloop": {"foreach": False}, "cudagraph": {"capturable": True}}.get(form, {})
        opt = torch_optimizer(torch, opt_cls, net.parameters(), kind, **opt_kw, **extra)
        if opt is None:
            skipped[form] = f"{opt_cls.__name__} has no {form} form on {device}"
            continue
        try:
            if form == "cudagraph":
                cases[form] = GraphCase(torch, net, opt, X, y, device)
            elif form == "compile":
                case = TorchCase(torch, net, opt, X, y, device, compile=True)
                t0 = time.perf_counter()
                with time_box(compile_timeout):
                    case.compile_now()
                case.compile_s = time.perf_counter() - t0
                cases[form] = case
            else:
                cases[form] = TorchCase(torch, net, opt, X, y, device)
        except Exception as e:  # noqa: BLE001 - a form that fails here is skipped, with why
            first = (str(e).strip().splitlines() or [""])[0][:200]
            skipped[form] = f"failed: {type(e).__name__}: {first}"
    return cases, skipped
