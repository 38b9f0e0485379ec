"""The work behind ``POST /api/emotions``, without the web: one model, many request threads.

``EmotionService(model)`` loads a FER2013 model once (``gpunet.faces.fer_model``) and answers
``analyse(data)`` for the bytes of a JPEG or PNG file, from any thread, with exactly what
``gpunet.detect_emotions`` answers for the same photo.

Thread safety: decoding, the face search (scikit-image's cascade only reads its trained
tables) and the crops run in the caller's thread, at most ``workers`` at once so that a burst
of large photos cannot hold more than ``workers`` decoded photos in memory. The model's
forward pass is not safe to run twice at once (layers keep their last input and output as
attributes, ``FullyConnectedNet`` reuses work buffers), so every forward runs in one thread
of the service's own; that thread also holds the GPU device chosen with ``backend.use``.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .. import backend
from ..faces import classify_faces, emotions_list, face_crops, fer_model, find_faces, read_photo

DEFAULT_MAX_UPLOAD = 10_000_000  # bytes of one request body (10 MB)
PHOTO_FORMATS = ("JPEG", "PNG")  # what the page offers; Pillow's other decoders stay closed
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text) -> int:
    """Bytes in ``text``: ``10MB`` (10**6 bytes a MB), ``512KiB`` (2**10 a KiB), ``1.5GB`` or ``2000``.

    ValueError naming the text when it is not a positive size.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(text), re.IGNORECASE)
    n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]) if m else 0
    if n < 1:
        raise ValueError(
            f"{text!r}: expected a size such as 10MB, 512KiB or 2000000 (bytes), at least 1 byte"
        )
    return n


def model_name(model, where) -> str:
    """The name the page shows: the packaged model's, or the model file's own."""
    if model is None:
        return "fer2013.npz (packaged with gpunet)"
    if isinstance(model, (str, os.PathLike)) or getattr(model, "source", None):
        return os.path.basename(os.fspath(where))  # the file it was loaded from
    return str(where)


class EmotionService:
    """A FER2013 model shared by every request (read-only), its forward passes in one thread.

    model: None (the packaged model), a model file or a loaded model, as ``detect_emotions``.
    workers: photos decoded and searched at once (default: the CPU count).
    max_pixels: a larger photo is refused (None: Pillow's ``Image.MAX_IMAGE_PIXELS``).
    """

    def __init__(self, model=None, workers=None, max_pixels=None):
        self.model, self.meta, where = fer_model(model)
        self.name, self.path = model_name(model, where), os.fspath(where)
        self.max_pixels = max_pixels
        self._slots = threading.BoundedSemaphore(workers or os.cpu_count() or 2)
        self._forward = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="gpunet-model", initializer=_same_device
        )

    def analyse(self, data: bytes, name: str = "photo") -> dict:
        """``{"faces": detect_emotions's list, "size": [width, height], "ms": compute time}``.

        data: the bytes of a JPEG or PNG file; name: what an error calls it. Blocks: call it
        from a worker thread. ValueError (one line) for a photo that cannot be read.
        """
        with self._slots:
            start = time.perf_counter()
            pixels = read_photo(data, name=name, formats=PHOTO_FORMATS, max_pixels=self.max_pixels)
            boxes = find_faces(pixels)
            crops = face_crops(pixels, boxes, self.meta["image_shape"])  # (N, C, H, W) uint8
        probs = self._forward.submit(classify_faces, crops, self.model, self.meta).result()  # (N, 7)
        ms = (time.perf_counter() - start) * 1000
        h, w = pixels.shape[:2]
        return {"faces": emotions_list(boxes, probs), "size": [int(w), int(h)], "ms": round(ms, 1)}

    def close(self):
        self._forward.shutdown(wait=True)


def _same_device():
    """The model thread computes on the GPU the main thread chose (CuPy's device is per thread)."""
    if backend.name() == "cupy":
        backend.use(backend.selected())
