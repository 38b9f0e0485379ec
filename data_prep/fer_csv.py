"""FER2013 as CSV: the Kaggle ``fer2013.csv`` and the ``icml_face_data.csv`` variant.

Both have one face per row: ``emotion`` (0..6, official order), ``pixels``
(2304 space-separated ints 0..255, a 48x48 image row by row) and ``Usage``
(Training, PublicTest, PrivateTest). They differ in column order and in the
icml header's leading spaces (``emotion, Usage, pixels``), so columns are found
by stripped, case-folded name. A CSV without a Usage column is all training.
Usage maps to splits: Training -> train, PublicTest -> val, PrivateTest -> test.
"""

from __future__ import annotations

import csv
from typing import TextIO

import numpy as np
from tqdm import tqdm

from .errors import PrepError
from .splits import Split

PIXELS = 48 * 48
NUM_CLASSES = 7
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


def is_ascii_digits(text: str) -> bool:
    """True for a non-empty run of the ASCII digits 0-9 only (``str.isdigit`` also takes
    "²" and "٣", which ``int`` then rejects or reads as 3)."""
    return text.isascii() and text.isdigit()


def parse_pixels(text: str, where: str) -> np.ndarray:
    """uint8 (2304,) from the pixels field; PrepError naming ``where`` when it is not
    2304 integers 0..255."""
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
        if values.size == PIXELS and values.min() >= 0 and values.max() <= 255:
            return values.astype(np.uint8)
    except ValueError:
        pass
    tokens = text.split()
    if len(tokens) != PIXELS:
        raise PrepError(f"{where}: expected {PIXELS} pixel values, found {len(tokens)}")
    for i, tok in enumerate(tokens, 1):
        if not is_ascii_digits(tok) or int(tok) > 255:
            raise PrepError(f"{where}: pixel {i}: expected an integer 0..255, found {tok!r}")
    raise PrepError(f"{where}: unreadable pixel values")  # not reached


def parse_label(text: str, where: str) -> int:
    """The emotion label 0..6 in ``text``; PrepError otherwise."""
    t = text.strip()
    if not (is_ascii_digits(t) and int(t) < NUM_CLASSES):
        raise PrepError(f"{where}: expected an emotion label 0..6, found {t!r}")
    return int(t)


def read_csv(stream: TextIO, name: str, progress: bool = False) -> dict:
    """Splits from an open CSV text stream; ``name`` is the file as the user knows it.

    Returns {split: Split} with x (N, 1, 48, 48) uint8, in row order.
    """
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise PrepError(f"{name}: empty file; expected the header emotion,pixels,Usage") from None
    except csv.Error as e:
        raise PrepError(f"{name} line 1: not a CSV file ({e})") from None
    except UnicodeDecodeError as e:
        raise PrepError(
            f"{name}: expected UTF-8 text, found byte {e.object[e.start : e.start + 1]!r} "
            f"at offset {e.start} of a block that cannot be decoded"
        ) from None
    cols = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = [c for c in ("emotion", "pixels") if c not in cols]
    if missing:
        raise PrepError(
            f"{name} line 1: expected columns emotion, pixels, Usage; "
            f"found {','.join(header)!r} (no {missing[0]})"
        )
    ie, ip, iu = cols["emotion"], cols["pixels"], cols.get("usage")
    need = max(ie, ip, -1 if iu is None else iu) + 1
    rows: dict = {}
    try:
        for row in tqdm(reader, desc="reading rows", unit="row", disable=not progress, leave=False):
            if not any(f.strip() for f in row):
                continue
            where = f"{name} line {reader.line_num}"
            if len(row) < need:
                raise PrepError(f"{where}: expected {len(header)} fields, found {len(row)}")
            label = parse_label(row[ie], where)
            usage = "Training" if iu is None else row[iu].strip()
            if usage not in USAGE_SPLITS:
                raise PrepError(
                    f"{where}: expected Usage Training, PublicTest or PrivateTest, found {usage!r}"
                )
            xs, ys = rows.setdefault(usage, ([], []))
            xs.append(parse_pixels(row[ip], where))
            ys.append(label)
    except csv.Error as e:
        raise PrepError(f"{name} line {reader.line_num}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise PrepError(
            f"{name} near line {reader.line_num + 1}: expected UTF-8 text, found "
            f"byte {e.object[e.start : e.start + 1]!r} that is not ({e.reason})"
        ) from None
    return {
        USAGE_SPLITS[u]: Split(np.stack(xs).reshape(-1, 1, 48, 48), np.asarray(ys, dtype=np.int64), u)
        for u, (xs, ys) in rows.items()
    }
