"""FER2013 sources: CSVs, image trees, and the coursework layout.

Accepted:

- ``fer2013.csv`` / ``icml_face_data.csv`` (see :mod:`data_prep.fer_csv`), as a
  file or inside a folder or archive;
- an image tree ``{train,test}/<class>/*.jpg|png`` with class folders angry,
  disgust, fear, happy, neutral, sad, surprise (any case), as a folder, zip or
  tar; in ``test/``, files named ``PublicTest_*`` go to ``val`` and
  ``PrivateTest_*`` to ``test`` (other names stay in ``test``);
- the coursework layout ``Train/``, ``Test/`` and ``labels_public.txt`` (a
  header, then ``Train/<name>.jpg,<label>`` lines): labelled images go to the
  split of their folder, unlabelled ones are skipped and reported in the notes.

Labels always follow the official order (0 angry ... 6 neutral), whatever the
folder order. Images are 48x48 grey; colour is converted, other sizes need resize.
"""

from __future__ import annotations

import io
from pathlib import Path

from .errors import PrepError
from .fer_csv import NUM_CLASSES, is_ascii_digits, read_csv
from .hashing import file_digests
from .image_tree import SPLIT_FOLDERS, has_split_folders, read_image_tree
from .images import decode_image
from .splits import SourceData, stack_split
from .trees import SizeBudget, SourceTree, find_root, open_tree

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
IMAGE_SHAPE = (1, 48, 48)  # (C, H, W)
CSV_NAMES = ("fer2013.csv", "icml_face_data.csv")
LABELS_FILE = "labels_public.txt"
DEFAULT_VAL_SIZE = 0
_PREFIXES = {"PublicTest_": ("val", "PublicTest"), "PrivateTest_": ("test", "PrivateTest")}


def route(split: str, filename: str) -> tuple:
    """(split, usage) of one image-tree file: the usage prefixes of test/ decide."""
    if split == "test":
        for prefix, target in _PREFIXES.items():
            if filename.startswith(prefix):
                return target
    if split == "train" and filename.startswith("Training_"):
        return "train", "Training"
    return split, None


def _csv_member(tree: SourceTree):
    names = {p.lower(): p for p in tree.paths() if "/" not in p}
    return next((names[n] for n in CSV_NAMES if n in names), None)


def layout(tree: SourceTree):
    """'coursework', 'images', 'csv' or None for the top of ``tree``."""
    if LABELS_FILE in tree.paths():
        return "coursework"
    if has_split_folders(tree):
        return "images"
    return "csv" if _csv_member(tree) else None


def read(src, *, resize: bool = False, progress: bool = False) -> SourceData:
    """Read any FER2013 source into Splits of x (N, 1, 48, 48) uint8, y (N,) int64."""
    src = Path(src)
    notes: list = []
    if src.is_file() and src.suffix.lower() == ".csv":
        SizeBudget(str(src)).take(src.name, src.stat().st_size)
        with open(src, newline="", encoding="utf-8-sig") as f:
            splits = read_csv(f, str(src), progress)
        fingerprint = file_digests(src)
    else:
        tree = open_tree(src, progress)
        if tree is None:
            raise PrepError(
                f"{src}: expected fer2013.csv, icml_face_data.csv, a folder or a "
                "zip/tar archive, found a file of another kind"
            )
        with tree:
            splits, fingerprint = _read_tree(tree, src, resize, progress, notes)
    if "test" not in splits:
        notes.append("the source has no test images (PrivateTest): no test split")
    return SourceData(splits, list(CLASS_NAMES), fingerprint, notes)


def _read_tree(tree: SourceTree, src, resize: bool, progress: bool, notes: list) -> tuple:
    """(splits, fingerprint) of a folder or archive."""
    root = find_root(tree, lambda t: layout(t) is not None)
    if root is None:
        raise PrepError(
            f"{src}: expected fer2013.csv, icml_face_data.csv, a train/<class>/ "
            "image tree or Train/ + labels_public.txt (folder, zip or tar), "
            "found none of them"
        )
    kind = layout(root)
    if kind == "csv":
        member = _csv_member(root)
        try:
            text = root.read(member).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PrepError(f"{root.where(member)}: not a text file ({e})") from None
        splits = read_csv(io.StringIO(text, newline=""), root.where(member), progress)
    elif kind == "images":
        splits = read_image_tree(
            root, list(CLASS_NAMES), IMAGE_SHAPE, resize=resize, router=route, progress=progress
        )
    else:
        splits = read_coursework(root, resize, notes)
    return splits, root.fingerprint()


def _parse_label(text: str, where: str) -> int:
    t = text.strip()
    if is_ascii_digits(t) and int(t) < NUM_CLASSES:
        return int(t)
    if t.lower() in CLASS_NAMES:
        return CLASS_NAMES.index(t.lower())
    raise PrepError(f"{where}: expected a label 0..6 or a class name, found {t!r}")


def read_coursework(tree: SourceTree, resize: bool, notes: list) -> dict:
    """Splits from ``Train/``, ``Test/`` and ``labels_public.txt``, in the order of the
    labels file; appends a note for images that have no label."""
    lf = tree.where(LABELS_FILE)
    try:
        lines = tree.read(LABELS_FILE).decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise PrepError(f"{lf}: not a text file ({e})") from None
    by_lower = {p.lower(): p for p in tree.paths()}
    labelled: dict = {}  # path -> (split, label)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if n == 1 and not (len(parts) == 2 and "/" in parts[0].replace("\\", "/")):
            continue  # the header line
        where = f"{lf} line {n}"
        if len(parts) != 2:
            raise PrepError(f"{where}: expected '<folder>/<image>,<label>', found {line.strip()!r}")
        name = parts[0].replace("\\", "/")
        while name.startswith("./"):
            name = name[2:]
        path = by_lower.get(name.lower())
        if path is None:
            raise PrepError(f"{where}: {name}: no such image in {tree.label}")
        split = SPLIT_FOLDERS.get(path.split("/", 1)[0].lower())
        if split is None or path.count("/") != 1:
            raise PrepError(f"{where}: {name}: expected an image directly in Train/ or Test/")
        if path in labelled:
            raise PrepError(f"{where}: {name}: labelled twice")
        labelled[path] = (split, _parse_label(parts[1], where))
    images: dict = {}
    for path, (split, label) in labelled.items():
        xs, ys = images.setdefault(split, ([], []))
        xs.append(decode_image(tree.read(path), tree.where(path), IMAGE_SHAPE[1:], resize=resize))
        ys.append(label)
    unlabelled: dict = {}
    for p in tree.paths():
        top = p.split("/", 1)[0]
        if "/" in p and top.lower() in SPLIT_FOLDERS and p not in labelled:
            unlabelled[top] = unlabelled.get(top, 0) + 1
    for top, count in sorted(unlabelled.items()):
        notes.append(f"{count} image(s) in {top}/ have no label in {LABELS_FILE} and cannot be used; skipped")
    if not images:
        raise PrepError(f"{lf}: expected labelled images, found none")
    return {s: stack_split(xs, ys, IMAGE_SHAPE) for s, (xs, ys) in images.items()}
