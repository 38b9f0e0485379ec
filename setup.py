"""gpunet: hand-written fully connected nets on NumPy or CuPy, with HDF5 dataset tools."""
from setuptools import find_packages, setup

setup(
    name="gpunet",
    version="0.1.0",
    description="From-scratch fully connected neural networks on NumPy (CPU) or CuPy (GPU)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gpunet", "gpunet.*", "data_prep", "data_prep.*"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "h5py>=3.0",
        "tqdm>=4.0",
        "Pillow>=9.0",        # reading face images (prep tools, gpunet-predict)
        "matplotlib>=3.5",    # loss/accuracy curves and confusion-matrix heat maps
        "optuna>=3.0",        # gpunet-tune: samplers, pruning, resumable storage
    ],
    extras_require={
        "cuda12x": ["cupy-cuda12x>=13"],
        "cuda13x": ["cupy-cuda13x>=13"],
        "dev": ["pytest>=7", "pytest-xdist>=3"],
        "bench": ["torch"],
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
        ],
    },
)
