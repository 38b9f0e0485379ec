#!/usr/bin/env bash
# GPU acceptance run on one NVIDIA GPU. Steps (GPU_CHECK_STEPS, default all, in this order):
#   pytest_gpu     the CuPy test cases (mark "gpu": gradient checks, fused vs plain kernels, optimizer and
#                  dropout kernels, steady memory pool), the backend-parity cases left to `parity`;
#   graph_vs_eager the graph-versus-eager training-step test on its own;
#   graph_dropout  issue 22: the whole step in one CUDA graph on CuPy with dropout on (replays = eager steps,
#                  new masks per replay, a changed lr without re-capture, first-replay check), the Philox
#                  stream and the one-launch scalars kernel (tests/training/test_train_step.py, test_philox.py);
#   epilogue       issue 22: Linear+bias(+ReLU) as one cuBLASLt call with a fused epilogue (nvmath-python)
#                  against the plain path, forward (BIAS, RELU_BIAS, RELU_AUX_BIAS) and backward (DRELU_BGRAD
#                  reading the forward's bitmask) (tests/kernels/test_epilogue.py; says whether nvmath imports);
#   cnn_graph      issue 22: the CNN's step in one CUDA graph (im2col products and batch norm's row dots
#                  through the bound cuBLAS handle, cuDNN plans checked in the warm-up run in the capture):
#                  the replay-equals-eager test on CuPy, then a small CNN's graph against eager steps (whether
#                  captured, the first-replay difference, cuDNN calls inside the capture, ms per step);
#   bf16_accuracy  issue 22: bf16/tf32 products on cuBLAS against the rounding model, and the same FC
#                  training in fp32 and bf16 within 0.5 point (tests/training/test_precision.py);
#   parity         backend parity (issue 19): the FC and CNN recipes, dropout 0, identical weights, one
#                  fixed batch of 128, 50 Adam and 50 SGD-momentum steps, float32 and float64, on NumPy
#                  and CuPy; loss curves and final parameters within 1e-3 (tests/training/test_backend_parity.py);
#   nvrtc_cpu      the NVRTC compile and CPU-execution tests of every CUDA source (needs the pinned CuPy);
#   cudnn_parity   cuDNN (gpunet/ops/cudnn.py, the [cuda13x] extra) against the NumPy im2col path, forward and
#                  backward, float32/float16, both layouts; batch norm and batch norm + ReLU (cudnn_norm.py)
#                  against NumPy float64, training/inference/backward; first says whether cuDNN is usable at all;
#   bench_fc, bench_cnn  gpunet-bench on CuPy beside PyTorch, TF32 off (every PyTorch form: eager per
#                  optimizer, one CUDA graph, torch.compile; the fastest is named; the CNN with cudnn.benchmark);
#   bench_fc_tf32, bench_fc_bf16  issue 22: the FC bench with --precision tf32 / bf16 on both sides
#                  (PyTorch: TF32 switch / autocast bf16);
#   train_cifar10  gpunet-train cifar10 --epochs 3 on a SYNTHETIC CIFAR-10 tarball (it runs, nothing more);
#   train_fer_cnn  gpunet-train fer2013 --arch cnn, 2 epochs on a SYNTHETIC FER2013-sized file (time per epoch);
#   fer_cnn_device the FER CNN recipe, all 36 epochs (FER_EPOCHS), data on the device, on that SYNTHETIC
#                  file: the training time against the 25 s target (accuracy means nothing on random pixels);
#   real_fer       the acceptance run: `gpunet-train fer2013 --arch cnn --backend cupy` (the default 36-epoch
#                  recipe) on the REAL FER2013 image tarball named by FER_SOURCE (skipped without it);
#                  PublicTest accuracy must reach 0.63, as on the CPU.
# Then a one-screen summary (also in $OUT/summary.txt). Everything lands in $OUT (default ./gpu_check_out).
# Usage: [OUT=dir] [PYTHON=python] [GPU_CHECK_STEPS="parity real_fer"] [FER_SOURCE=fer2013-images.tar.gz] \
#        scripts/gpu_check.sh
# Exit status 0 only if every step run passed (2: no usable GPU, nothing run).
# On a machine without PyPI, carry the cuDNN frontend and nvmath-python as wheels (scripts/gpu_wheels.sh
# fetches them, about 17 MB) and install them first, or cudnn_parity/epilogue find the im2col/plain paths.
# A dry run without a GPU: GPU_CHECK_BACKEND=emulated runs the training steps on the emulated GPU
# (the CuPy code paths on the CPU; FER_EPOCHS=1 keeps real_fer short), so the script itself is
# checked before device time is spent; the "gpu"-marked tests then skip.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # run from the checkout, installed or not
status=0
summary=()

BACKEND="${GPU_CHECK_BACKEND:-cupy}"
STEPS=" ${GPU_CHECK_STEPS:-pytest_gpu graph_vs_eager graph_dropout epilogue cnn_graph bf16_accuracy parity nvrtc_cpu cudnn_parity bench_fc bench_fc_tf32 bench_fc_bf16 bench_cnn train_cifar10 make_data make_fer train_fer_cnn fer_cnn_device real_fer} "
# a step is run when named, or when a step that needs it is (its data, its accuracy check)
wanted() {
    local need=$1
    case $1 in make_data) need=train_cifar10 ;; make_fer) need=train_fer_cnn ;; real_fer_acc) need=real_fer ;;
        fer_cnn_time) need=fer_cnn_device ;; esac
    [[ "$STEPS" == *" $1 "* || "$STEPS" == *" $need "* ]] || { [ "$1" = make_fer ] && [[ "$STEPS" == *" fer_cnn_device "* ]]; }
}

# step NAME LIMIT_S CMD...: run CMD with a time limit, output to $OUT/NAME.txt, one summary line
step() {
    local name=$1 limit=$2 t0 rc res
    shift 2
    wanted "$name" || return 0
    t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    case $rc in
        0) res=PASS ;;
        124|137) res="TIMEOUT(${limit}s)"; status=1 ;;
        *) res="FAIL($rc)"; status=1 ;;
    esac
    summary+=("$(printf '%-16s %-13s %4ss  %s' "$name" "$res" "$(( $(date +%s) - t0 ))" \
        "$(grep -v '^\s*$' "$OUT/$name.txt" | tail -n 1 | cut -c1-90)")")
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi not found"
    "$PY" -c "import numpy, cupy; print('numpy', numpy.__version__, 'cupy', cupy.__version__)"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
        || echo "torch not importable: the benchmark runs without the comparison"
} > "$OUT/env.txt" 2>&1
if [ "$BACKEND" != emulated ] && ! "$PY" -c "
import sys
from gpunet import backend
sys.exit(0 if backend.gpu_available() else 'no usable GPU: %s' % backend.gpu_unavailable_reason())
" >> "$OUT/env.txt" 2>&1; then
    cat "$OUT/env.txt"
    echo "gpu_check: no usable GPU, nothing run (see $OUT/env.txt)" >&2
    exit 2
fi

# 1. CuPy test cases, then the graph-vs-eager test alone (it is among them too; this names it in the summary)
step pytest_gpu 120 env GPUNET_BACKEND=cupy "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ \
    --deselect tests/training/test_backend_parity.py
step graph_vs_eager 45 "$PY" -m pytest -q -p no:cacheprovider tests/training/test_train_step.py -k cupy
# 1b. issue 22: the CUDA-graph step with dropout, the fused epilogue, the reduced precisions
step graph_dropout 90 "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/training/test_train_step.py tests/kernels/test_philox.py
step epilogue 60 bash -c "'$PY' -c \"
from gpunet.ops import epilogue; m = epilogue.nvmath_module()
print('nvmath-python:', m.__version__ if m else 'not importable: the plain path runs')\" &&
    '$PY' -m pytest -q -rs -p no:cacheprovider tests/kernels/test_epilogue.py"
step cnn_graph 150 bash -c "'$PY' -m pytest -q -rs -p no:cacheprovider tests/training/test_train_step.py \
    -k 'cnn and cupy' && GPUNET_BACKEND='$BACKEND' '$PY' -c \"
import time, numpy as np
from gpunet import backend, optim, train_step
from gpunet.nn import Sequential, Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear
from gpunet.ops import cudnn
backend.use(); xp = backend.xp()
inside = []
if cudnn.CUDNN.unavailable() is None:
    run = cudnn.CUDNN.executor.run
    cudnn.CUDNN.executor.run = lambda p, a: (inside.append(cudnn._capturing()), run(p, a))[1]
def net():
    return Sequential([Conv2d(3, 32, 3, padding=1), BatchNorm2d(32), ReLU(), MaxPool2d(2), Conv2d(32, 64, 3, padding=1),
        BatchNorm2d(64), ReLU(), MaxPool2d(2), Flatten(), Linear(64 * 8 * 8, 256), ReLU(), Linear(256, 10)],
        seed=0, input_shape=(3, 32, 32))
rng = np.random.default_rng(0)
X, y = xp.asarray(rng.standard_normal((128, 3, 32, 32), dtype=np.float32)), xp.asarray(rng.integers(0, 10, 128))
for graph in (True, False):
    m = net(); step = train_step.make_train_step(m, optim.Optimizer('adam', {}), graph=graph)
    for _ in range(3): step(X, y, 1e-3)
    xp.cuda.Device().synchronize(); t = time.perf_counter()
    for _ in range(20): step(X, y, 1e-3)
    xp.cuda.Device().synchronize(); ms = (time.perf_counter() - t) * 50
    print('graph' if graph else 'eager', 'ms/step %.3f' % ms,
          'failed:', getattr(step, 'failed', None), 'check_diff:', getattr(step, 'check_diff', None))
print('cuDNN runs inside a capture:', sum(inside), 'of', len(inside))
\""
step bf16_accuracy 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/training/test_precision.py
step parity 240 "$PY" -m pytest -q -s -rA -p no:cacheprovider tests/training/test_backend_parity.py -k test_gpu_trains_as_numpy
# 2. every CUDA source through NVRTC and on the CPU
step nvrtc_cpu 45 "$PY" -m pytest -q -p no:cacheprovider -m "nvrtc or kernel_cpu" tests/kernels/test_nvrtc.py \
    tests/kernels/test_kernel_cpu.py
# 2b. cuDNN: usable here? then its parity with the im2col path and the batch-norm reference (the "gpu" cases
#     skip on the emulated GPU)
step cudnn_parity 180 bash -c "GPUNET_BACKEND='$BACKEND' '$PY' -c \"
from gpunet import backend; backend.use()
from gpunet.ops.cudnn import CUDNN
print('cuDNN:', CUDNN.unavailable() or 'usable, version %s' % CUDNN.executor.version)\" &&
    '$PY' -m pytest -q -rs -p no:cacheprovider tests/kernels/test_cudnn.py tests/kernels/test_cudnn_norm.py"
# 3. the benchmarks (TF32 off is the bench's default)
step bench_fc 150 "$PY" scripts/bench.py --backend "$BACKEND" --steps 50 --repeats 5 --warmup 10 --json "$OUT/bench_fc.json"
for p in tf32 bf16; do
    step "bench_fc_$p" 150 "$PY" scripts/bench.py --backend "$BACKEND" --precision "$p" --view steps --steps 50 \
        --repeats 5 --warmup 10 --json "$OUT/bench_fc_$p.json"
done
if "$PY" scripts/bench.py --help 2>/dev/null | grep -q -- "--cnn"; then
    step bench_cnn 360 "$PY" scripts/bench.py --backend "$BACKEND" --cnn --steps 20 --repeats 3 --warmup 5 \
        --json "$OUT/bench_cnn.json"
else
    summary+=("$(printf '%-16s %-13s %4ss  %s' bench_cnn SKIP 0 'this checkout has no gpunet-bench --cnn')")
fi
# 4. end to end on synthetic CIFAR-10 (tests/prep_fixtures.py writes the official python layout)
rm -rf "$OUT/data" "$OUT/run_cifar10"
step make_data 30 "$PY" -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from prep_fixtures import cifar_batches, make_tar, write_cifar_python
out = Path('$OUT/data'); out.mkdir(parents=True)
src = write_cifar_python(out / 'src', cifar_batches(per_batch=1000, seed=0))
print('SYNTHETIC CIFAR-10 tarball:', make_tar(src, out / 'cifar-10-python.tar.gz'))
"
step train_cifar10 90 "$PY" scripts/train.py cifar10 --backend "$BACKEND" --epochs 3 --data-dir "$OUT/data" \
    --source "$OUT/data/cifar-10-python.tar.gz" --no-download --out "$OUT/run_cifar10" --no-plots
# 5. the FER2013 CNN recipe (gpunet-train fer2013 --arch cnn), 2 epochs on a SYNTHETIC FER2013-sized
#    file (28,709 train / 3,589 val / 3,589 test random 48x48 images): only the time per epoch means anything
rm -rf "$OUT/fer" "$OUT/run_fer_cnn"
step make_fer 60 "$PY" -c "
import numpy as np
from pathlib import Path
from data_prep import h5format
from data_prep.splits import SourceData, Split
rng = np.random.default_rng(0)
sizes = {'train': (28709, 'Training'), 'val': (3589, 'PublicTest'), 'test': (3589, 'PrivateTest')}
splits = {k: Split(rng.integers(0, 256, (n, 1, 48, 48), dtype=np.uint8), rng.integers(0, 7, n), u)
          for k, (n, u) in sizes.items()}
names = ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral']
Path('$OUT/fer').mkdir(parents=True)
h5format.write('$OUT/fer/fer2013.h5', SourceData(splits, names, {'sha256': '0' * 64}),
               dataset='fer2013', source='synthetic', command='gpu_check.sh')
print('SYNTHETIC FER2013 file: $OUT/fer/fer2013.h5')
"
step train_fer_cnn 150 "$PY" scripts/train.py fer2013 --arch cnn --backend "$BACKEND" --epochs 2 \
    --data-dir "$OUT/fer" --no-download --out "$OUT/run_fer_cnn" --no-plots
# 5a. the whole FER CNN recipe (36 epochs) with the data kept on the device, on the same synthetic file
rm -rf "$OUT/run_fer_device"
step fer_cnn_device 300 "$PY" scripts/train.py fer2013 --arch cnn --backend "$BACKEND" --data-on-device yes \
    --data-dir "$OUT/fer" --no-download --out "$OUT/run_fer_device" --no-plots ${FER_EPOCHS:+--epochs "$FER_EPOCHS"}
step fer_cnn_time 10 "$PY" -c "
import json
m = json.load(open('$OUT/run_fer_device/metrics.json'))
print(f'FER CNN recipe, data on the device: {m[\"train_time_s\"]:.1f} s of training (target <= 25 s for 36 epochs)')"
# 5b. the acceptance run on the REAL FER2013 tarball (the default CNN recipe), converted by the train command
if wanted real_fer && [ -z "${FER_SOURCE:-}" ]; then
    summary+=("$(printf '%-16s %-13s %4ss  %s' real_fer SKIP 0 'FER_SOURCE (the real fer2013-images.tar.gz) not given')")
elif wanted real_fer; then
    rm -rf "$OUT/run_fer_real" "${TMPDIR:-/tmp}/gpu_check_fer_real"
    step real_fer 420 "$PY" scripts/train.py fer2013 --arch cnn --backend "$BACKEND" --source "$FER_SOURCE" \
        --data-dir "${TMPDIR:-/tmp}/gpu_check_fer_real" --no-download --out "$OUT/run_fer_real" \
        ${FER_EPOCHS:+--epochs "$FER_EPOCHS"}
    step real_fer_acc 10 "$PY" -c "
import json, sys
h = json.load(open('$OUT/run_fer_real/history.json'))
val = h.get('val_acc_history') or h.get('val_acc')
print('val acc per epoch:', ' '.join(f'{v:.3f}' for v in val))
best = max(val)
print(f'best PublicTest {best:.4f} (target 0.63)')
sys.exit(0 if best >= 0.63 or '${FER_EPOCHS:-}' else 1)   # a shortened dry run is not judged"
fi

# 6. summary
{
    echo "gpu_check $(date -u +%FT%TZ)  $(grep -m1 -v '^name' "$OUT/env.txt" | head -c 60)"
    grep -E '^(numpy|torch)' "$OUT/env.txt"
    printf '%-16s %-13s %5s  %s\n' step result time "last line of $OUT/<step>.txt"
    printf '%s\n' "${summary[@]}"
    for j in "$OUT"/bench_fc.json "$OUT"/bench_fc_tf32.json "$OUT"/bench_fc_bf16.json "$OUT"/bench_cnn.json; do
        [ -f "$j" ] && "$PY" -c "
import json, sys
d = json.load(open(sys.argv[1]))
rows = d if isinstance(d, list) else d.get('results', d)
print(sys.argv[1].split('/')[-1] + ':', json.dumps(rows)[:300])" "$j"
    done
    echo "train data: train_cifar10 and train_fer_cnn SYNTHETIC (random pixels); real_fer the REAL FER2013" \
         "tarball (FER_SOURCE=${FER_SOURCE:-unset}); backend $BACKEND; exit status $status"
} | tee "$OUT/summary.txt"
exit $status
