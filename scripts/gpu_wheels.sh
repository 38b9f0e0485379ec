#!/usr/bin/env bash
# Wheels of the GPU extras' NVIDIA libraries, for a GPU machine that cannot reach PyPI: the cuDNN
# frontend for Python (the convolutions' cuDNN path, gpunet/ops/cudnn.py) and nvmath-python (the
# fused-epilogue GEMMs, gpunet/ops/epilogue.py). Their runtime needs (the cuDNN library,
# cuda-bindings, cuda-core, cuda-pathfinder) are expected on that machine already.
# Usage: scripts/gpu_wheels.sh [DIR=.whl] [PYTHON_VERSION=3.12]
# There: python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
# (the frontend's optional nvidia-cutlass-dsl, for its Python-written kernels, is not fetched:
# `import cudnn` and its graph API work without it).
set -euo pipefail
dir="${1:-.whl}"
pyver="${2:-3.12}"
mkdir -p "$dir"
# versions inside the ranges of setup.py's cuda extras, the newest on PyPI on 2026-12-04
for pkg in 'nvidia-cudnn-frontend==1.32.0' 'nvmath-python==1.0.1'; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir" "$pkg"
done
ls -l "$dir"
