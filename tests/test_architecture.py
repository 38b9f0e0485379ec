"""The shape of the tree, checked: no import cycle, small modules, one owner per format, thin models."""

import ast
import re
import os
import sys
from pathlib import Path

from common import REPO as ROOT

PACKAGES = ("gpunet", "data_prep")


def modules():
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name[:-9] if name.endswith(".__init__") else name] = path
    return out


def import_graph(lazy=False):
    """Module-level imports between the package's modules; ``lazy``: imports inside functions too."""
    mods = modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if lazy else tree.body:
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                graph[m].update(subs)
                if len(subs) < len(node.names) and target in mods and target != m:
                    graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_can_fail():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_import_cycle_even_through_lazy_imports():
    """A function-level import hides a cycle from Python, not from a reader (predict <-> pretrained was
    one)."""
    assert cycles(import_graph(lazy=True)) == []


LONG_MODULE = 500  # lines (as ruff formats them): a module past this is worth splitting, not a failure


def test_long_modules_are_reported_not_failed():
    """Line length and formatting are ruff's (pyproject.toml, run by .ci/run); a long module only warns."""
    import warnings

    long = {
        str(p.relative_to(ROOT)): n
        for p in modules().values()
        if (n := len(p.read_text().splitlines())) > LONG_MODULE
    }
    for path, n in sorted(long.items()):
        warnings.warn(f"{path}: {n} lines (over {LONG_MODULE}): consider splitting it", stacklevel=1)
    assert (ROOT / "pyproject.toml").read_text().count("line-length = 110") == 1


def test_models_compute_only_through_the_layers():
    graph = import_graph()
    for model in ("gpunet.model", "gpunet.nn.modules", "gpunet.nn.sequential"):
        assert "gpunet.cuda_sources" not in graph[model], f"{model} imports the kernel plumbing directly"
        assert "gpunet.layers" in graph[model]


def test_one_module_writes_hdf5():
    users = sorted(name for name, p in modules().items() if "h5py" in p.read_text())
    assert users == ["gpunet.data.h5file"]


def test_no_product_code_knows_the_workspace():
    for p in modules().values():
        assert "shared/datasets" not in p.read_text() and '"shared"' not in p.read_text(), p


def test_one_module_talks_to_the_blas_library():
    """ctypes is for the BLAS library, in one module; gpunet.testing loads the g++-built kernel bodies
    of the emulated GPU with it (no BLAS)."""
    users = sorted(
        name
        for name, p in modules().items()
        if re.search(r"^\s*import ctypes|^\s*from ctypes", p.read_text(), re.M)
    )
    # gpunet.ops.gemm: cuBLAS called directly on CuPy's handle, so a CUDA graph can capture it (issue 22)
    assert [u for u in users if not u.startswith("gpunet.testing.")] == ["gpunet.ops.gemm", "gpunet.threads"]


def test_gpu_kernels_live_in_the_cupy_ops():
    """What runs only on a GPU is visible in one place: every elementwise CUDA kernel is declared in
    gpunet/ops/cupy_ops.py (the one-launch update's raw kernels are generated in multi_tensor; the Philox
    dropout stream's CUDA text sits beside its NumPy twin in gpunet/ops/philox.py)."""
    declaring = sorted(
        name
        for name, p in modules().items()
        if re.search(r"cuda_sources\.(elementwise|raw)\(", p.read_text())
    )
    assert declaring == ["gpunet.multi_tensor", "gpunet.ops.cupy_ops", "gpunet.ops.philox"]
