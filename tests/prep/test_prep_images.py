"""The public image helpers reused by gpunet-predict."""

import numpy as np
import pytest
from PIL import Image

from data_prep import PrepError, list_images, load_image
from data_prep.images import decode_image


def test_load_grey_exact(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (48, 48)
    np.testing.assert_array_equal(out, img)


def test_colour_becomes_luma(tmp_path):
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = load_image(tmp_path / "c.png")
    assert np.all(np.abs(out.astype(int) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1)
    colour = load_image(tmp_path / "c.png", grayscale=False)
    assert colour.shape == (48, 48, 3)
    np.testing.assert_array_equal(colour, rgb)


def test_size_error_and_resize(tmp_path):
    Image.fromarray(np.full((100, 60), 77, np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(PrepError, match=r"big\.png: expected a 48x48 image, found 60x100"):
        load_image(tmp_path / "big.png")
    out = load_image(tmp_path / "big.png", resize=True)
    assert out.shape == (48, 48) and np.all(out == 77)
    assert load_image(tmp_path / "big.png", shape=(100, 60)).shape == (100, 60)


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(PrepError, match="x.jpg: not a readable image"):
        load_image(tmp_path / "x.jpg")
    with pytest.raises(PrepError, match="cannot read"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(PrepError, match="entry: not a readable image"):
        decode_image(b"", "entry")


def test_list_images_sorted(tmp_path):
    for name in ("b.png", "a10.JPG", "a2.jpg", "notes.txt", ".hidden.png", "c.jpeg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a10.JPG", "a2.jpg", "b.png", "c.jpeg"]
    with pytest.raises(PrepError, match="expected a folder"):
        list_images(tmp_path / "b.png")
