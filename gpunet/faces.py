"""Faces in ordinary photos: find them, classify their emotions, draw the result.

``detect_emotions(image, model=None)`` answers as the ``fer`` package's
``FER().detect_emotions`` does: a list of ``{"box": [x, y, w, h], "emotions":
{"angry": p, ..., "neutral": p}}``, largest face first, boxes in pixels of the
photo (x right, y down).

The detector is scikit-image's bundled LBP frontal-face cascade
(``skimage.feature.Cascade``): a maintained library that ships its trained
cascade file, so nothing is downloaded at run time (OpenCV 5 dropped
``CascadeClassifier``). It is the optional extra ``gpunet[faces]``.

Each face is converted exactly as the training data was (``data_prep.images``):
grey with Pillow's ``convert("L")``, fitted to the model's H x W with bilinear
filtering, then the model's own normalisation from its meta.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from . import backend
from .io import regular_file

FER_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
DETECT_MAX_SIDE = 800  # photos are searched at most this large (boxes scaled back): bounded time
MIN_FACE_FRACTION = 1 / 16  # smallest face searched, as a fraction of the photo's shorter side
# Cascade settings chosen on scikit-image's own photos: with these the astronaut's face is
# found alone at 160 to 1600 pixels a side but for one false box on her mission patch at 1024
# (6 neighbours: false boxes on her suit beside a second copy of her), and the cat in
# ``chelsea`` is not a face. Fewer neighbours find more faces and more false ones.
SCALE_FACTOR = 1.1
MIN_NEIGHBOURS = 10


def _cascade():
    """scikit-image's LBP frontal-face detector; ImportError naming the extra when it is missing."""
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except ImportError:
        raise ImportError("face detection needs scikit-image: pip install 'gpunet[faces]'") from None
    return _load_cascade(Cascade, lbp_frontal_face_cascade_filename())


@functools.lru_cache(maxsize=1)
def _load_cascade(cascade_class, filename):
    return cascade_class(filename)  # parsing the XML once per process


def read_photo(image, *, name=None, formats=None, max_pixels=None) -> np.ndarray:
    """uint8 (H, W) grey or (H, W, 3) RGB pixels of ``image``.

    image: a file path or the bytes of an image file (EXIF orientation applied, other modes
    converted to RGB), or an H x W / H x W x 3 uint8 array (used as is).
    name: what error messages call bytes (default ``photo``); a path names itself.
    formats: Pillow format names to accept, e.g. ``("JPEG", "PNG")`` (None: any Pillow reads).
    max_pixels: a photo of more pixels (width x height) is refused before it is decoded, as a
    decompression bomb, without Pillow's warning (None: Pillow's ``Image.MAX_IMAGE_PIXELS``;
    Pillow itself refuses more than twice its ``MAX_IMAGE_PIXELS``, whatever ``max_pixels`` says).
    ValueError naming what was wrong: not an image, truncated, too many pixels.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(image), name or "photo", formats, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        regular_file(image, "image file")  # FileNotFoundError, or ValueError for a FIFO or a folder
        try:
            return _decode(image, os.fspath(image), formats, max_pixels)
        except FileNotFoundError:
            raise FileNotFoundError(f"{os.fspath(image)}: no such image file") from None
    a = backend.to_numpy(image) if not isinstance(image, np.ndarray) else image
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or 0 in a.shape:
        raise ValueError(
            f"image: expected a path or a uint8 array of shape (H, W) or (H, W, 3), "
            f"got {a.dtype} {tuple(a.shape)}"
        )
    return a


def _decode(source, where, formats, max_pixels) -> np.ndarray:
    """Pixels of the image file ``source`` (a path or a binary file object) named ``where``."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with _open_quietly(source, formats) as im:  # reads the header only
            if limit and im.width * im.height > limit:
                too_many = f"{im.width} x {im.height} pixels"
            else:
                too_many = None
                im = ImageOps.exif_transpose(im)
                im = im.convert("L" if im.mode in ("L", "I;16", "I", "1") else "RGB")  # decodes
                return np.asarray(im, np.uint8).copy()
    except Image.DecompressionBombError as e:  # Pillow's own limit (twice MAX_IMAGE_PIXELS)
        raise ValueError(f"{where}: refused, too many pixels ({e})") from None
    except UnidentifiedImageError:
        kinds = " or ".join(formats) if formats else "an image format Pillow reads"
        raise ValueError(f"{where}: not a readable image (not {kinds})") from None
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # truncated or damaged (PNG chunks raise SyntaxError)
        raise ValueError(f"{where}: not a readable image ({e})") from None
    raise ValueError(
        f"{where}: refused, too many pixels ({too_many}, more than {limit:,}: a decompression bomb?)"
    )


_OPEN_LOCK = threading.Lock()  # catch_warnings swaps the process's filter list: one thread at a time


def _open_quietly(source, formats) -> Image.Image:
    """``Image.open`` without Pillow's ``DecompressionBombWarning``: the size is judged right after
    (``max_pixels``), so a photo over the limit is refused and the warning is only noise on stderr.
    Only the header is read under the lock; decoding runs outside it, in parallel."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source, formats=formats)


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")


def find_faces(pixels: np.ndarray) -> list:
    """Face boxes ``[x, y, w, h]`` (ints, photo pixels), largest first (ties: top, then left).

    pixels: uint8 (H, W) or (H, W, 3). The search runs on the grey photo scaled down to
    at most ``DETECT_MAX_SIDE`` pixels a side.
    """
    grey = _pil(pixels).convert("L")
    scale = min(1.0, DETECT_MAX_SIDE / max(grey.size))
    if scale < 1.0:
        grey = grey.resize(
            (max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.BILINEAR
        )
    g = np.asarray(grey)
    side = min(g.shape)
    if side < 24:  # the cascade's own window is 24 x 24
        return []
    lo = max(24, int(side * MIN_FACE_FRACTION))
    found = _cascade().detect_multi_scale(
        img=g,
        scale_factor=SCALE_FACTOR,
        step_ratio=1,
        min_size=(lo, lo),
        max_size=(side, side),
        min_neighbor_number=MIN_NEIGHBOURS,
    )
    h, w = pixels.shape[:2]
    boxes = []
    for d in found:
        x, y = round(d["c"] / scale), round(d["r"] / scale)
        bw, bh = round(d["width"] / scale), round(d["height"] / scale)
        x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
        boxes.append([x, y, min(bw, w - x), min(bh, h - y)])
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


def face_crops(pixels: np.ndarray, boxes, image_shape) -> np.ndarray:
    """uint8 (N, C, H, W) crops of ``boxes`` for a model of ``image_shape`` [C, H, W] (C = 1 grey,
    3 RGB), converted as ``data_prep.images.decode_image(..., resize=True)`` converts a photo."""
    c, h, w = (int(s) for s in image_shape)
    if c not in (1, 3):
        raise ValueError(f"image_shape: expected 1 (grey) or 3 (RGB) channels, got {c}")
    im = _pil(pixels).convert("L" if c == 1 else "RGB")
    out = np.empty((len(boxes), c, h, w), np.uint8)
    for i, (x, y, bw, bh) in enumerate(boxes):
        face = ImageOps.fit(im.crop((x, y, x + bw, y + bh)), (w, h), method=Image.Resampling.BILINEAR)
        a = np.asarray(face, np.uint8)
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return out


def fer_model(model=None):
    """``(model, meta, where)`` for a FER2013 model: ``model`` None (the packaged one, see
    ``gpunet.pretrained``), a model file path or a loaded model. ValueError naming the
    model when its classes are not FER2013's seven."""
    from .predict import image_channels, model_meta, resolve_model

    if model is None:
        from . import pretrained

        model = pretrained.path()
    if isinstance(model, (str, os.PathLike)):
        model, where = resolve_model(model)
    else:
        where = getattr(model, "source", None) or "model"
    meta = model_meta(model, where)
    image_channels(meta, where)  # photos are read for it: grey or RGB
    names = [str(n).lower() for n in meta.get("class_names") or []]
    if model.num_classes != len(FER_EMOTIONS) or (names and names != list(FER_EMOTIONS)):
        raise ValueError(
            f"{where}: expected a FER2013 model with classes {list(FER_EMOTIONS)}, "
            f"found {model.num_classes} classes {meta.get('class_names')}"
        )
    return model, meta, where


def classify_faces(crops: np.ndarray, model, meta) -> np.ndarray:
    """(N, 7) float64 NumPy emotion probabilities of uint8 (N, C, H, W) ``crops``."""
    from .layers import softmax
    from .preprocess import normalize

    if len(crops) == 0:
        return np.zeros((0, len(FER_EMOTIONS)))
    xp = backend.get_array_module(next(iter(model.params.values())))
    scores = model.loss(normalize(crops, meta, model.dtype, xp))  # (N, 7)
    return backend.to_numpy(softmax(scores.astype(np.float64)))


def detect_emotions(image, model=None) -> list:
    """Faces in ``image`` with their emotion probabilities, largest face first.

    image: a photo's path, or uint8 pixels (H, W) grey or (H, W, 3) RGB.
    model: None for the packaged FER2013 model, a model file path, or a loaded model.
    Returns ``[{"box": [x, y, w, h], "emotions": {"angry": p, ..., "neutral": p}}, ...]``
    (``fer``'s names; probabilities are floats summing to 1 per face); [] when no face.
    """
    model, meta, _ = fer_model(model)
    pixels = read_photo(image)
    boxes = find_faces(pixels)
    probs = classify_faces(face_crops(pixels, boxes, meta["image_shape"]), model, meta)
    return emotions_list(boxes, probs)


def emotions_list(boxes, probs) -> list:
    """``detect_emotions``'s answer from face ``boxes`` and their (N, 7) ``probs``."""
    return [
        {"box": [int(v) for v in b], "emotions": {n: float(p) for n, p in zip(FER_EMOTIONS, row)}}
        for b, row in zip(boxes, probs)
    ]


def draw_faces(image, faces) -> Image.Image:
    """An RGB copy of ``image`` (path or pixels) with each face's box and top emotion drawn.

    faces: ``detect_emotions``'s list. Uses Pillow's ImageDraw and its default font.
    """
    im = _pil(read_photo(image)).convert("RGB")
    draw = ImageDraw.Draw(im)
    width = max(2, round(min(im.size) / 200))
    try:
        font = ImageFont.load_default(size=max(12, round(min(im.size) / 30)))
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        font = ImageFont.load_default()
    for f in faces:
        x, y, w, h = f["box"]
        name, p = max(f["emotions"].items(), key=lambda kv: kv[1])
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 40, 40), width=width)
        text = f"{name} {p:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        ty = y - (bottom - top) - 2 * width if y - (bottom - top) - 2 * width >= 0 else y + h + width
        draw.rectangle(
            [x, ty, x + (right - left) + 2 * width, ty + (bottom - top) + 2 * width], fill=(255, 40, 40)
        )
        draw.text((x + width, ty + width - (top - y)), text, fill=(255, 255, 255), font=font)
    return im


def detect_folder(img_folder, model=None):
    """Yield ``(path, faces)`` for every image in ``img_folder`` (lexicographic by name, the files
    ``gpunet-predict`` reads); ``faces`` as ``detect_emotions`` returns them."""
    from .predict import list_image_files

    model, meta, _ = fer_model(model)
    for path in list_image_files(img_folder):
        yield path, detect_emotions(path, model)


def write_faces_csv(out, results, decimals: int = 6):
    """Write ``file,face,x,y,w,h,label,class_name,p_angry...`` rows, one per face, to ``out`` (a path,
    written atomically, or None / "-" for standard output). results: ``(file name, faces)`` pairs;
    ``face`` counts from 0, largest first; ``label`` is the FER2013 index of the top emotion."""
    import csv
    import sys

    from .io import atomic_open

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            ["file", "face", "x", "y", "w", "h", "label", "class_name"] + [f"p_{n}" for n in FER_EMOTIONS]
        )
        for name, faces in results:
            for k, face in enumerate(faces):
                p = [face["emotions"][n] for n in FER_EMOTIONS]
                label = int(np.argmax(p))
                w.writerow(
                    [name, k, *face["box"], label, FER_EMOTIONS[label]] + [f"{v:.{decimals}f}" for v in p]
                )

    if out is None or os.fspath(out) == "-":
        write(sys.stdout)
        return
    with atomic_open(out, newline="", encoding="utf-8") as f:
        write(f)


def save_annotated(path, faces, out_dir) -> str:
    """Write ``draw_faces(path, faces)`` to ``out_dir`` under the photo's own name, atomically;
    returns the path written. ValueError when ``out_dir`` is the photo's own folder."""
    from pathlib import Path

    from .io import atomic_path

    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and out_dir.resolve() == path.parent.resolve():
        raise ValueError(f"{out_dir}: annotated copies would overwrite the photos; choose another folder")
    target = out_dir / path.name
    im = draw_faces(path, faces)
    with atomic_path(target) as tmp:
        im.save(tmp)  # the format follows the suffix, as the original's
    return os.fspath(target)
