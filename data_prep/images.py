"""Decoding single images into uint8 arrays, and listing image files.

Public and stable: the dataset converters use :func:`decode_image` on archive
members, and ``gpunet-predict`` uses :func:`load_image` / :func:`list_images`
on user photos, so both see faces exactly as the training data was prepared.

Colour is reduced to grey with Pillow's ``convert("L")`` (ITU-R 601-2 luma:
``L = 0.299 R + 0.587 G + 0.114 B``); EXIF orientation is applied first. An
image of another size is an error unless ``resize=True``, which centre-crops to
the target aspect ratio and resizes with bilinear filtering.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gpunet.io import regular_file

from .errors import PrepError

MAX_PIXELS = 50_000_000  # a 50-megapixel photo; a larger header is refused before decoding
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_name(name: str) -> bool:
    """True when ``name`` ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(
    data: bytes, name: str, shape: tuple[int, int] = (48, 48), *, resize: bool = False, grayscale: bool = True
) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to pixels.

    data: the file's bytes; name: how to call it in errors (e.g. ``"fer.tar: train/sad/1.jpg"``).
    shape: (H, W) wanted. Returns uint8 ``(H, W)`` when ``grayscale`` else ``(H, W, 3)`` RGB.
    Raises PrepError when the bytes are not an image, or the size differs and not ``resize``.
    """
    h, w = int(shape[0]), int(shape[1])
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_size(im.size, (w, h), name, resize)  # from the header, before decoding
            if im.info.get("exif"):  # only photos carry an orientation; skip the parse otherwise
                im = ImageOps.exif_transpose(im)
            im = im.convert("L" if grayscale else "RGB")
    except PrepError:
        raise
    except Exception as e:  # Pillow raises many types for bad data
        raise PrepError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    if im.size != (w, h):
        if not resize:
            raise PrepError(
                f"{name}: expected a {w}x{h} image, found {im.size[0]}x{im.size[1]} "
                "(pass --resize / resize=True to scale it)"
            )
        im = ImageOps.fit(im, (w, h), method=Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def _check_size(size, want, name, resize) -> None:
    """PrepError for another size without ``resize``, or more than MAX_PIXELS to scale."""
    if size != want and not resize:
        raise PrepError(
            f"{name}: expected a {want[0]}x{want[1]} image, found {size[0]}x{size[1]} "
            "(pass --resize / resize=True to scale it)"
        )
    if size[0] * size[1] > MAX_PIXELS:
        raise PrepError(f"{name}: expected at most {MAX_PIXELS} pixels to scale, found {size[0]}x{size[1]}")


def load_image(
    path, shape: tuple[int, int] = (48, 48), resize: bool = False, grayscale: bool = True
) -> np.ndarray:
    """Read one image file into uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB).

    path: file path; shape: (H, W), default the FER2013 48x48. Colour is converted
    to grey when ``grayscale``. Another size raises PrepError unless ``resize``.
    """
    path = Path(path)
    try:
        regular_file(path, "image file")  # a FIFO named x.png would block the reader for ever
    except FileNotFoundError:
        pass  # said below, as before: "cannot read (No such file or directory)"
    except ValueError as e:
        raise PrepError(str(e)) from None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PrepError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_image(data, str(path), shape, resize=resize, grayscale=grayscale)


def list_images(folder) -> list[Path]:
    """The image files directly in ``folder`` (by extension, hidden files skipped),
    sorted lexicographically by file name. Raises PrepError if it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrepError(
            f"{folder}: expected a folder of images, found {'a file' if folder.exists() else 'nothing'}"
        )
    return sorted(
        # not only regular files: a pipe or a dangling link named x.png is listed, then refused by name
        (
            p
            for p in folder.iterdir()
            if not p.is_dir() and not p.name.startswith(".") and is_image_name(p.name)
        ),
        key=lambda p: p.name,
    )
