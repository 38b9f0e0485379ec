"""``convert``: one call from a source (file, folder, archive or download) to an HDF5 file.

Steps: refuse an existing output (unless ``force``), find and read the source
(:mod:`data_prep.cifar10`, :mod:`data_prep.fer2013`), carve a validation split
when the source has none and one is wanted, then write the file atomically
(:mod:`data_prep.atomic`) in the layout of :mod:`data_prep.h5format`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import cifar10, fer2013, h5format
from .atomic import check_output, refusing_existing, sweep
from .download import download_cifar10
from .errors import PrepError
from .splits import carve_validation
from .trees import progress_default

DATASETS = {"cifar10": cifar10, "fer2013": fer2013}
FER_DOWNLOAD_HELP = (
    "fer2013 cannot be downloaded automatically (Kaggle needs a login): "
    "download fer2013.csv (or icml_face_data.csv) by hand from "
    "https://www.kaggle.com/c/challenges-in-representation-learning-facial-"
    "expression-recognition-challenge/data and pass it as SRC"
)


def convert(
    dataset: str,
    src,
    out,
    *,
    val_size: Optional[int] = None,
    seed: int = 0,
    force: bool = False,
    resize: bool = False,
    download: bool = False,
    cache_dir=None,
    compress: Optional[str] = None,
    progress: Optional[bool] = None,
    command: Optional[str] = None,
) -> Path:
    """Convert ``src`` of ``dataset`` ('cifar10' | 'fer2013') into the HDF5 file ``out``.

    val_size: samples moved from train to val when the source has no validation part
        (None: 1000 for cifar10, none for fer2013; 0: none).
    seed: seed of that stratified draw. force: overwrite ``out``. resize: scale images
        of another size instead of failing. download: fetch the official CIFAR-10
        tarball into ``cache_dir`` (then ``src`` must be None). compress: None, 'gzip'
        or 'lzf'. progress: tqdm bars (None: when stderr is a terminal).
    command: recorded in the file (default: this call written as Python).
    Returns the output path. Raises PrepError (a ValueError) for any problem with the
    input, ``gpunet.io.WriteError`` (an OSError naming ``out``) for a full disk, and
    ``gpunet.interrupts.Interrupted`` for SIGINT/SIGTERM/SIGHUP; ``out`` is then left as
    it was and no temporary file remains. Temporary files of ``out`` that killed
    conversions left are removed first.
    """
    module = DATASETS.get(dataset)
    if module is None:
        raise PrepError(f"dataset: expected one of {', '.join(DATASETS)}, found {dataset!r}")
    if compress not in h5format.COMPRESSIONS:
        raise PrepError(f"compress: expected gzip or lzf, found {compress!r}")
    out = Path(out)
    check_output(out, force)
    sweep(out)
    progress = progress_default() if progress is None else progress
    if command is None:
        command = (
            f"data_prep.convert({dataset!r}, {None if src is None else str(src)!r}, "
            f"{str(out)!r}, val_size={val_size}, seed={seed}, resize={resize}, "
            f"download={download})"
        )
    if download:
        if dataset != "cifar10":
            raise PrepError(FER_DOWNLOAD_HELP)
        if src is not None:
            raise PrepError(f"{src}: give a source or --download, not both")
        src = download_cifar10(cache_dir, progress)
    elif src is None:
        raise PrepError(f"{dataset}: expected a source file or folder (SRC), or --download")
    src = Path(src)
    if not src.exists():
        raise PrepError(f"{src}: no such file or folder")
    if out.exists() and src.resolve() == out.resolve():
        raise PrepError(f"{out}: the output would overwrite the source")
    data = module.read(src, resize=resize, progress=progress)
    if "train" not in data.splits:
        raise PrepError(f"{src}: expected training samples, found only {', '.join(data.splits) or 'nothing'}")
    n_val = module.DEFAULT_VAL_SIZE if val_size is None else int(val_size)
    if n_val and "val" in data.splits:
        if val_size is not None:
            raise PrepError(
                f"{src}: the source already has a validation split "
                f"({data.splits['val'].usage or 'val'}); leave out --val-size"
            )
    elif n_val:
        data.splits["train"], data.splits["val"] = carve_validation(
            data.splits["train"], n_val, seed, len(data.class_names)
        )
    name = src.resolve().name
    with refusing_existing(out):
        h5format.write(
            out,
            data,
            dataset=dataset,
            source=name,
            command=command,
            compress=compress,
            overwrite=force,
            where=str(src),
        )
    return out
