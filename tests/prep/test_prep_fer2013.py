"""FER2013 conversion from CSVs, image trees (plain, zip, tar) and the coursework layout."""

import numpy as np
import pytest
from PIL import Image
from prep_fixtures import (
    FER_NAMES,
    fer_rows,
    jpeg_bytes,
    make_tar,
    make_zip,
    read_h5,
    write_fer_csv,
    write_image_tree,
)

import data_prep

SPLIT_OF_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


@pytest.mark.parametrize("icml", [False, True])
def test_csv(tmp_path, icml):
    rows = fer_rows(30)
    name = "icml_face_data.csv" if icml else "fer2013.csv"
    src = write_fer_csv(tmp_path / name, rows, icml=icml)
    out = data_prep.convert("fer2013", src, tmp_path / "f.h5", progress=False)
    h = read_h5(out)
    for usage, split in SPLIT_OF_USAGE.items():
        mine = [r for r in rows if r[2] == usage]
        x, y = h["splits"][split]
        np.testing.assert_array_equal(y, [r[0] for r in mine])
        np.testing.assert_array_equal(x, np.stack([r[1] for r in mine]).reshape(-1, 1, 48, 48))
    assert list(h["attrs"]["class_names"]) == FER_NAMES
    assert tuple(h["attrs"]["image_shape"]) == (1, 48, 48)
    info = data_prep.info(out)
    assert info["splits"]["val"]["usage"] == "PublicTest"
    assert info["splits"]["test"]["usage"] == "PrivateTest"
    xf = h["splits"]["train"][0].astype(np.float64)
    assert h["attrs"]["mean"][0] == pytest.approx(xf.mean(), abs=1e-9)
    assert h["attrs"]["std"][0] == pytest.approx(xf.std(), abs=1e-9)


def test_csv_in_archive_and_val_size(tmp_path):
    rows = fer_rows(40, usages=("Training",))
    folder = tmp_path / "fer2013"
    folder.mkdir()
    write_fer_csv(folder / "fer2013.csv", rows)
    tar = make_tar(folder, tmp_path / "fer2013.tar.gz")
    out = data_prep.convert("fer2013", tar, tmp_path / "f.h5", val_size=14, seed=5)
    h = read_h5(out)
    assert len(h["splits"]["val"][1]) == 14 and len(h["splits"]["train"][1]) == 26
    np.testing.assert_array_equal(np.bincount(h["splits"]["val"][1], minlength=7), [2] * 7)
    assert "test" not in h["splits"]


def fer_tree(rng, names_by_split):
    """{rel path: grey pixels} and the expected (split, label, name, pixels) list."""
    files, want = {}, []
    for folder, entries in names_by_split.items():
        for cls, fname, split in entries:
            img = rng.integers(0, 256, (48, 48), dtype=np.uint8)
            files[f"{folder}/{cls}/{fname}"] = img
            want.append((split, FER_NAMES.index(cls.lower()), fname, img))
    return files, want


def check_tree(out, want):
    h = read_h5(out)
    assert set(h["splits"]) == {w[0] for w in want}
    for split in h["splits"]:
        mine = sorted((w for w in want if w[0] == split), key=lambda w: (w[1], w[2]))
        x, y = h["splits"][split]
        np.testing.assert_array_equal(y, [w[1] for w in mine])
        np.testing.assert_array_equal(x[:, 0], np.stack([w[3] for w in mine]))
    return h


@pytest.mark.parametrize("packed", ["folder", "zip", "tar", "tgz", "zip-top", "tar.gz-top"])
def test_image_tree_label_order_and_usage_prefixes(tmp_path, packed):
    rng = np.random.default_rng(2)
    files, want = fer_tree(
        rng,
        {
            "train": [
                ("neutral", "Training_2.png", "train"),
                ("sad", "Training_1.png", "train"),
                ("angry", "Training_9.png", "train"),
                ("Happy", "Training_3.png", "train"),
                ("neutral", "Training_10.png", "train"),
            ],
            "test": [
                ("surprise", "PublicTest_5.png", "val"),
                ("neutral", "PrivateTest_7.png", "test"),
                ("disgust", "PublicTest_4.png", "val"),
                ("FEAR", "PrivateTest_6.png", "test"),
            ],
        },
    )
    src = write_image_tree(tmp_path / "tree", files)
    top = packed.endswith("-top")
    if packed.startswith("zip"):
        src = make_zip(src, tmp_path / "faces.zip", prefix="fer/" if top else "")
    elif packed != "folder":
        suffix = packed.replace("-top", "")
        src = make_tar(src, tmp_path / f"faces.{suffix}", arcname="fer" if top else ".")
    out = data_prep.convert("fer2013", src, tmp_path / "f.h5", progress=False)
    h = check_tree(out, want)
    y = h["splits"]["train"][1]
    assert list(y) == [0, 3, 4, 6, 6]  # angry, happy, sad, neutral (official order)
    info = data_prep.info(out)
    assert info["splits"]["val"]["usage"] == "PublicTest"
    assert info["splits"]["test"]["usage"] == "PrivateTest"


def test_real_style_tree_without_private_test_gives_train_and_val(tmp_path):
    rng = np.random.default_rng(3)
    files, want = fer_tree(
        rng,
        {
            "train": [("happy", "Training_1.jpg", "train"), ("sad", "Training_2.jpg", "train")],
            "test": [("happy", "PublicTest_3.jpg", "val")],
        },
    )
    src = tmp_path / "tree"
    for rel, img in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg_bytes(img))
    out = data_prep.convert("fer2013", src, tmp_path / "f.h5")
    h = read_h5(out)
    assert set(h["splits"]) == {"train", "val"}
    for split, x in (("train", h["splits"]["train"][0]), ("val", h["splits"]["val"][0])):
        mine = sorted((w for w in want if w[0] == split), key=lambda w: (w[1], w[2]))
        for i, w in enumerate(mine):  # oracle: Pillow decoding the same JPEG file
            ref = np.asarray(
                Image.open(src / ("train" if split == "train" else "test") / FER_NAMES[w[1]] / w[2])
            )
            np.testing.assert_array_equal(x[i, 0], ref)
    assert any("no test split" in n for n in data_prep.info(out)["notes"])


def test_unprefixed_test_folder_is_test(tmp_path):
    rng = np.random.default_rng(4)
    files, want = fer_tree(
        rng,
        {
            "train": [("fear", "a.png", "train")],
            "test": [("fear", "b.png", "test"), ("sad", "c.png", "test")],
        },
    )
    out = data_prep.convert("fer2013", write_image_tree(tmp_path / "t", files), tmp_path / "f.h5")
    check_tree(out, want)


def test_colour_to_grey_and_resize(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    big = np.random.default_rng(6).integers(0, 256, (96, 64), dtype=np.uint8)
    src = write_image_tree(tmp_path / "t", {"train/happy/a.png": rgb})
    h = read_h5(data_prep.convert("fer2013", src, tmp_path / "f.h5"))
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    luma = r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000
    assert np.abs(h["splits"]["train"][0][0, 0] - luma).max() <= 1.0
    write_image_tree(src, {"train/sad/big.png": big})
    with pytest.raises(data_prep.PrepError, match=r"big\.png: expected a 48x48 image, found 64x96"):
        data_prep.convert("fer2013", src, tmp_path / "g.h5")
    h = read_h5(data_prep.convert("fer2013", src, tmp_path / "g.h5", resize=True))
    assert h["splits"]["train"][0].shape == (2, 1, 48, 48)


def test_coursework_layout(tmp_path):
    rng = np.random.default_rng(7)
    imgs = {
        n: rng.integers(0, 256, (48, 48), dtype=np.uint8)
        for n in ("Train/b.png", "Train/a.png", "Train/c.png", "Test/x.png", "Test/y.png", "Test/z.png")
    }
    root = write_image_tree(tmp_path / "cw", imgs)
    (root / "labels_public.txt").write_text(
        "img,emotion\nTrain/b.png,6\nTrain/a.png,4\nTest/y.png,3\nTrain/c.png,0\n"
    )
    out = data_prep.convert("fer2013", root, tmp_path / "f.h5")
    h = read_h5(out)
    xtr, ytr = h["splits"]["train"]
    np.testing.assert_array_equal(ytr, [6, 4, 0])  # the labels file's order
    np.testing.assert_array_equal(
        xtr[:, 0], np.stack([imgs["Train/b.png"], imgs["Train/a.png"], imgs["Train/c.png"]])
    )
    xte, yte = h["splits"]["test"]
    np.testing.assert_array_equal(yte, [3])
    np.testing.assert_array_equal(xte[0, 0], imgs["Test/y.png"])
    notes = data_prep.info(out)["notes"]
    assert any("2 image(s) in Test/" in n and "cannot be used" in n for n in notes)
