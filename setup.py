"""gpunet: hand-written fully connected nets on NumPy or CuPy, with HDF5 dataset tools."""

from setuptools import find_packages, setup

setup(
    name="gpunet",
    version="0.1.0",
    description="From-scratch fully connected neural networks on NumPy (CPU) or CuPy (GPU)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gpunet", "gpunet.*", "data_prep", "data_prep.*"]),
    package_data={
        "gpunet.pretrained": ["*.npz"],  # the packaged FER2013 model
        "gpunet.serve": ["static/*.html", "static/*.js", "static/*.css"],  # gpunet-serve's page
    },
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "h5py>=3.0",
        "tqdm>=4.0",
        "Pillow>=9.0",  # reading face images (prep tools, gpunet-predict)
        "matplotlib>=3.5",  # loss/accuracy curves and confusion-matrix heat maps
        "optuna>=4.0",  # gpunet-tune: samplers, pruning, resumable storage (journal files: 4.0)
    ],
    extras_require={
        # cuDNN convolutions (gpunet/ops/cudnn.py): the cuDNN frontend for Python and the matching library;
        # nvmath-python: cuBLASLt products with fused epilogues (gpunet/ops/epilogue.py, optional at run time)
        "cuda12x": [
            "cupy-cuda12x>=13",
            "nvidia-cudnn-cu12>=9.0",
            "nvidia-cudnn-frontend>=1.12",
            "nvmath-python>=0.2",
        ],
        "cuda13x": [
            "cupy-cuda13x>=13",
            "nvidia-cudnn-cu13>=9.13",
            "nvidia-cudnn-frontend>=1.12",
            "nvmath-python>=0.2",
        ],
        # NVRTC compile tests without a GPU (gpunet/nvrtc.py is pinned to this CuPy; .ci/run installs the
        # same)
        "nvrtc": ["cupy-cuda13x==14.2.0", "nvidia-cuda-nvrtc==13.0.88"],
        "dev": [
            "ruff==0.17.6",  # lint and format (pyproject.toml), checked by .ci/run; pinned
            "pytest>=7",
            "pytest-xdist>=3",
            "scipy>=1.7",  # scipy: test oracles only
            "scikit-image>=0.19",
            "onnx>=1.12",
            "onnxruntime>=1.12",  # so CI runs those tests
            "psycopg[binary]>=3.1",
            "pgserver>=0.1.4",  # distributed tuning on a real PostgreSQL
            # gpunet-serve: its API on a real uvicorn (httpx) and its page in Debian's Chromium (playwright,
            # which downloads no browser here)
            "starlette>=1.7",  # 1.7: its TrustedHostMiddleware reads an IPv6 Host ([::1]:8000)
            "uvicorn>=0.30",
            "python-multipart>=0.0.18",
            "httpx>=0.27",
            "playwright>=1.40",
        ],
        "faces": ["scikit-image>=0.19"],  # gpunet.detect_emotions: its bundled face cascade
        # gpunet-serve: the page and JSON API (ASGI app, server, multipart forms); with "faces".
        # Starlette 1.7: its TrustedHostMiddleware reads an IPv6 Host header ([::1]:8000)
        "serve": ["starlette>=1.7", "uvicorn>=0.30", "python-multipart>=0.0.18", "scikit-image>=0.19"],
        "onnx": ["onnx>=1.12", "onnxruntime>=1.12"],  # gpunet-export (onnxruntime: to run the export)
        "bench": ["torch"],
        # gpunet-tune --storage postgresql://... (SQLAlchemy 2 maps postgresql:// to psycopg v3)
        "postgres": ["psycopg[binary]>=3.1"],
        "mysql": ["PyMySQL>=1.0"],  # gpunet-tune --storage mysql://... (used when mysqlclient is absent)
    },
    entry_points={
        "console_scripts": [
            "gpunet-prep=data_prep.cli:main",
            "gpunet-train=gpunet.cli.train:main",
            "gpunet-evaluate=gpunet.cli.evaluate:main",
            "gpunet-predict=gpunet.cli.predict:main",
            "gpunet-tune=gpunet.cli.tune:main",
            "gpunet-overfit=gpunet.cli.overfit:main",
            "gpunet-bench=gpunet.cli.bench:main",
            "gpunet-export=gpunet.cli.export:main",
            "gpunet-compare=gpunet.cli.compare:main",
            "gpunet-serve=gpunet.cli.serve:main",
        ],
    },
)
