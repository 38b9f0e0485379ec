"""Inference with a trained model: over an HDF5 split, or over a folder of images.

The model file carries its own preprocessing in ``model.meta`` (see
``gpunet.preprocess``), so a model path and the inputs are all that is needed.

- ``evaluate(model, data, split)`` -> ``(y_true, y_pred)`` for an HDF5 split;
- ``predict_folder(folder, model)`` -> ``(files, labels, probs)`` for images;
- ``test_fer_model(folder, model)`` -> FER2013 labels, the coursework entry point.

Image folders: every file whose name ends in an image extension
(``data_prep.images.IMAGE_EXTENSIONS``) is read, in lexicographic order of file
name; other files (``notes.txt``) and hidden files are skipped; a file with an
image extension that cannot be decoded is an error naming it. Colour images
are converted to grey for a one-channel model, and images of another size are
centre-cropped and resized to the model's image shape (as ``gpunet-prep --resize``).
"""

from __future__ import annotations

import csv
import logging
import os
import sys

import numpy as np

from . import backend
from .evaluation import (  # noqa: F401
    _model_xp,
    _on,
    check_data_fits,
    evaluate,
    image_channels,
    model_meta,
    resolve_model,
)
from .io import atomic_open
from .layers import softmax  # noqa: F401 (gpunet.predict.softmax: the one softmax, re-exported)
from .preprocess import meta_stats, normalize

log = logging.getLogger("gpunet")

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


# --------------------------------------------------------------------------- image folders


def list_image_files(folder) -> list:
    """Image files directly in ``folder``, lexicographic by name; ValueError when there are none."""
    from data_prep.errors import PrepError
    from data_prep.images import IMAGE_EXTENSIONS, list_images

    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"img_folder: expected a folder path, got {type(folder).__name__}")
    try:
        files = list_images(folder)
    except PrepError as e:
        raise ValueError(str(e)) from None
    if not files:
        raise ValueError(
            f"{os.fspath(folder)}: no image files (expected names ending in {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def load_images(paths, image_shape) -> np.ndarray:
    """uint8 (N, C, H, W) for ``image_shape`` [C, H, W] (C = 1 grey, 3 RGB), resizing as needed;
    ValueError naming the first file that is not a readable image."""
    from data_prep.errors import PrepError
    from data_prep.images import load_image

    c, h, w = (int(s) for s in image_shape)
    if c not in (1, 3):
        raise ValueError(f"image_shape: expected 1 (grey) or 3 (RGB) channels, got {c}")
    out = np.empty((len(paths), c, h, w), np.uint8)
    for i, p in enumerate(paths):
        try:
            img = load_image(p, shape=(h, w), resize=True, grayscale=c == 1)
        except PrepError as e:
            raise ValueError(str(e)) from None
        out[i] = img[None] if c == 1 else img.transpose(2, 0, 1)
    return out


def predict_folder(img_folder, model, batch_size: int = 256):
    """Classify every image in ``img_folder``.

    model: a FullyConnectedNet with meta, or a model file path.
    Returns ``(files, labels, probs)``: file names (lexicographic), (N,) int64 predicted
    labels and (N, C) float32 softmax probabilities, both NumPy. Images are read and
    classified ``batch_size`` at a time, so memory stays bounded for large folders.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    model, where = resolve_model(model)
    meta = model_meta(model, where)
    image_channels(meta, where)  # before any image is read, naming the model file
    paths = list_image_files(img_folder)
    xp = _model_xp(model)
    rows = meta_stats(meta, model.dtype, xp)
    labels, probs = [], []
    for a in range(0, len(paths), batch_size):
        x = load_images(paths[a : a + batch_size], meta["image_shape"])  # (B, C, H, W) uint8
        scores = model.loss(normalize(x, meta, model.dtype, xp, rows))  # (B, C)
        labels.append(backend.to_numpy(scores.argmax(axis=1)).astype(np.int64))
        probs.append(backend.to_numpy(softmax(scores)).astype(np.float32))
    return [p.name for p in paths], np.concatenate(labels), np.concatenate(probs)


def test_fer_model(img_folder, model=None) -> np.ndarray:
    """Predicted FER2013 labels (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise,
    6 neutral) of the face images in ``img_folder``, in lexicographic file-name order.

    img_folder: folder of face images (48x48 grey; colour and other sizes are converted).
    model: a model file path, or a loaded model, trained on FER2013; None (default): the
    model packaged with gpunet (``gpunet.pretrained``).
    Returns a NumPy int64 vector (N,).
    """
    if model is None:
        from . import pretrained

        model = pretrained.path()
    model, where = resolve_model(model)
    meta = model_meta(model, where)
    names = [n.lower() for n in meta.get("class_names") or []]
    if model.num_classes != len(FER2013_CLASSES) or (names and names != list(FER2013_CLASSES)):
        raise ValueError(
            f"{where}: expected a FER2013 model with classes {list(FER2013_CLASSES)}, "
            f"found {model.num_classes} classes {meta.get('class_names')}"
        )
    return predict_folder(img_folder, model)[1]


test_fer_model.__test__ = False  # not a pytest test despite its name


def write_predictions_csv(out, files, labels, probs, class_names, decimals: int = 6):
    """Write ``file,label,class_name,p_<class>...`` rows to ``out``: a path (written
    atomically) or None for standard output."""

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label", "class_name"] + [f"p_{n}" for n in class_names])
        for name, label, p in zip(files, labels, probs):
            w.writerow([name, int(label), class_names[int(label)]] + [f"{v:.{decimals}f}" for v in p])

    if out is None or os.fspath(out) == "-":
        write(sys.stdout)
        return
    with atomic_open(out, newline="", encoding="utf-8") as f:
        write(f)
