#!/usr/bin/env bash
# GPU acceptance run (under 5 minutes: the timeouts below add up to 4.5): the CuPy cases of the test suite, then
# gpunet-bench on CuPy beside PyTorch, TF32 off (the default) and on. Everything lands in $OUT
# (default ./gpu_check_out): env.txt, pytest_gpu.txt, bench_gpu{,_tf32}.{txt,json}.
# Usage: [OUT=dir] [PYTHON=python] scripts/gpu_check.sh ; exit status 0 only if every step passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
status=0

{
    date -u
    nvidia-smi || echo "nvidia-smi not found"
    "$PY" -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__)"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
        || echo "torch not importable: the benchmark runs without the comparison"
} > "$OUT/env.txt" 2>&1
if ! "$PY" -c "
import sys
from gpunet import backend
sys.exit(0 if backend.gpu_available() else 'no usable GPU: %s' % backend.gpu_unavailable_reason())
" >> "$OUT/env.txt" 2>&1; then
    cat "$OUT/env.txt"
    echo "gpu_check: no usable GPU, nothing run (see $OUT/env.txt)" >&2
    exit 2
fi

# 1. the CuPy test cases (parameter id "cupy", mark "gpu"): gradient checks, fused vs plain kernels,
#    optimizer kernels vs formulas, steady memory pool
GPUNET_BACKEND=cupy timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 \
    | tee "$OUT/pytest_gpu.txt" || status=1

# 2. the benchmark, both nets at batch 256 and 1024; TF32 off, then on (stated in each result)
timeout 90 "$PY" scripts/bench.py --backend cupy --steps 50 --repeats 7 --warmup 10 \
    --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt" || status=1
timeout 60 "$PY" scripts/bench.py --backend cupy --tf32 --steps 50 --repeats 5 --warmup 10 \
    --json "$OUT/bench_gpu_tf32.json" 2>&1 | tee "$OUT/bench_gpu_tf32.txt" || status=1

echo "gpu_check: exit status $status; results in $OUT" >&2
exit $status
