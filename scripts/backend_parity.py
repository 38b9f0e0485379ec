"""The fixed-batch experiment: the FC or CNN recipe (dropout 0) trained on one batch from identical
weights on two backends; prints both loss curves and the largest relative differences.

    python scripts/backend_parity.py --kind cnn --rule adam --steps 20 --against cupy
    python scripts/backend_parity.py --kind fc --against emulated      # no GPU: the emulated CuPy path

Exit status 1 when the backends differ by ``gpunet.testing.parity.CRITERIA`` for the dtype (float64:
every loss and final parameter within 1e-3; float32: the first 10 losses within 1e-2), or by --tol.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from gpunet.testing import parity  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=parity.KINDS, default="cnn")
    ap.add_argument("--rule", choices=sorted(parity.RULES), default="adam")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--against", default="cupy", help="the backend compared with numpy (cupy or emulated)")
    ap.add_argument("--tol", type=float, help="relative tolerance (default: parity.CRITERIA for the dtype)")
    ap.add_argument("--json", help="write both curves and the differences here")
    a = ap.parse_args(argv)
    run = lambda b: parity.curve(a.kind, b, a.rule, a.steps, np.dtype(a.dtype), a.batch)  # noqa: E731
    ref, other = run("numpy"), run(a.against)
    d = parity.verdict(a.kind, ref, other, np.dtype(a.dtype), a.tol)
    print(f"{a.kind} {a.rule} {a.dtype} batch {a.batch}: step  numpy  {a.against}")
    for k, (x, y) in enumerate(zip(ref[0], other[0]), 1):
        print(f"  {k:3d}  {x:.6f}  {y:.6f}")
    print(
        f"max relative difference: loss {d['loss']:.2e} (first {d['loss_steps']} steps {d['early']:.2e}), "
        f"parameters {d['param']:.2e} ({d['worst_param']})"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"args": vars(a), "numpy": ref[0].tolist(), a.against: other[0].tolist(), **d}, f, indent=1
            )
    ok = d["ok"]
    print(
        "AGREE" if ok else "DIFFER",
        f"(tolerance {d['tol']} on the first {d['loss_steps']} losses"
        + (" and the final parameters)" if d["params"] else ")"),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
