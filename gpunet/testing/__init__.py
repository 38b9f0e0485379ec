"""Tools for testing gpunet against itself: the backend-parity experiment and the emulated GPU backend.

- ``gpunet.testing.parity``: the fixed-batch experiment of the FC and CNN recipes, run on
  any backend from identical weights, so two backends' loss curves and parameters can be compared.
- ``gpunet.testing.emulated``: a stand-in for the cupy module whose arrays are NumPy arrays and
  whose CUDA kernels are the project's own CUDA sources compiled for the CPU (g++); selected with
  ``gpunet.backend.use("emulated")`` (or ``GPUNET_BACKEND=emulated``), it makes every CuPy-only
  branch of gpunet run without a GPU.
"""
