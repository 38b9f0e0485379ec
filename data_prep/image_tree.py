"""Reading ``<split>/<class>/<image>`` trees (folders or archives).

Split folders are ``train``, ``val`` (also ``valid``, ``validation``) and
``test``, in any case; class folders are matched to the dataset's class names
in any case, and an unknown one is an error. Files at the top level (a README)
are ignored; every other file must be an image of the dataset's size. Samples
are ordered by class index, then file name. A dataset may route single files
to another split by name (FER2013's ``PublicTest_``/``PrivateTest_`` prefixes).
"""

from __future__ import annotations

from typing import Callable, Optional

from tqdm import tqdm

from .errors import PrepError
from .images import decode_image
from .splits import stack_split
from .trees import SourceTree

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

# (split folder, file name) -> (split, usage or None)
Router = Callable[[str, str], tuple]


def default_router(split: str, filename: str) -> tuple:
    """Every file goes to the split its folder names."""
    return split, None


def has_split_folders(tree: SourceTree) -> bool:
    """True when some file lies under a top-level train/val/test folder."""
    return any(p.split("/", 1)[0].lower() in SPLIT_FOLDERS for p in tree.paths() if "/" in p)


def read_image_tree(
    tree: SourceTree,
    class_names: list,
    image_shape: tuple,
    *,
    resize: bool = False,
    router: Router = default_router,
    progress: bool = False,
) -> dict:
    """Decode every image of the tree into Splits.

    class_names: label order; image_shape: (C, H, W) with C 1 (grey) or 3 (RGB).
    Returns {split name: Split}; a split's ``usage`` is set when all its files agree.
    """
    index = {name.lower(): i for i, name in enumerate(class_names)}
    entries = []  # (split, label, file name, path, usage)
    for path in tree.paths():
        parts = path.split("/")
        if len(parts) == 1:
            continue  # README and the like beside the split folders
        split_folder = SPLIT_FOLDERS.get(parts[0].lower())
        if split_folder is None:
            raise PrepError(
                f"{tree.where(parts[0] + '/')}: unknown split folder "
                f"'{parts[0]}'; expected train, val or test"
            )
        if len(parts) != 3:
            raise PrepError(
                f"{tree.where(path)}: expected <split>/<class>/<image>, found a file at depth {len(parts)}"
            )
        label = index.get(parts[1].lower())
        if label is None:
            raise PrepError(
                f"{tree.where('/'.join(parts[:2]) + '/')}: unknown class folder "
                f"'{parts[1]}'; expected one of {', '.join(class_names)}"
            )
        split, usage = router(split_folder, parts[2])
        entries.append((split, label, parts[2], path, usage))
    if not entries:
        raise PrepError(f"{tree.label}: expected images under train/<class>/ or test/<class>/, found none")
    entries.sort(key=lambda e: (e[1], e[2], e[3]))
    c, h, w = image_shape
    images: dict = {}
    for split, label, _, path, usage in tqdm(
        entries, desc="decoding images", unit="img", disable=not progress, leave=False
    ):
        img = decode_image(tree.read(path), tree.where(path), (h, w), resize=resize, grayscale=(c == 1))
        if c == 3:
            img = img.transpose(2, 0, 1)
        xs, ys, usages = images.setdefault(split, ([], [], set()))
        xs.append(img)
        ys.append(label)
        usages.add(usage)
    out = {}
    for split, (xs, ys, usages) in images.items():
        usage: Optional[str] = usages.pop() if len(usages) == 1 else None
        out[split] = stack_split(xs, ys, image_shape, usage)
    return out


def count_by_split(splits: dict) -> str:
    """``"train 100, test 20"`` for notes and messages."""
    return ", ".join(f"{k} {len(v.y)}" for k, v in splits.items())
