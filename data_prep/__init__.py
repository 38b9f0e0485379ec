"""data_prep: turn CIFAR-10 and FER2013 downloads into gpunet's HDF5 files.

Public API::

    convert(dataset, src, out, *, val_size=None, seed=0, force=False, resize=False,
            download=False, cache_dir=None, compress=None, progress=None) -> Path
    info(path, strict=True) -> dict   (strict=False: also damaged files, with 'problems')
    images.load_image(path, shape=(48, 48), resize=False, grayscale=True) -> uint8 (H, W)
    images.list_images(folder) -> list[Path]
    errors.PrepError

The file layout is described in :mod:`data_prep.h5format`; the command line
(``gpunet-prep`` / ``python -m data_prep``) in :mod:`data_prep.cli`.
"""

from .errors import PrepError
from .h5format import FORMAT_VERSION
from .h5format import read_info as info
from .images import list_images, load_image
from .pipeline import convert

__all__ = ["convert", "info", "load_image", "list_images", "PrepError", "FORMAT_VERSION"]
