"""Writers of small gpunet HDF5 files for tests, all through the format's owner
(``gpunet.data.h5file``): well-formed ones, and deliberately malformed ones whose
root attributes the owner writes while the test places odd datasets inside."""
import numpy as np

from gpunet.data import h5file as fmt


def write_raw(path, x, y, chunks=None, class_names=None, mean=(127.0,), std=(64.0,), **attrs):
    """A file with /train/x = x and /train/y = y stored as given (any dtype or shape, chunked
    along N by ``chunks`` rows, contiguous when None); image_shape is taken from x when it has 4 axes."""
    x, y = np.asarray(x), np.asarray(y)
    shape = x.shape[1:] if x.ndim == 4 else (1, 1, 1)
    names = class_names if class_names is not None else [str(i) for i in range(max(int(y.max(initial=0)) + 1, 1))]
    with fmt.create(path, dataset="test", class_names=names, mean=mean, std=std, image_shape=shape, **attrs) as f:
        f.create_dataset("train/x", data=x, chunks=None if chunks is None else (chunks,) + x.shape[1:])
        f.create_dataset("train/y", data=y)
    return path
