"""gpunet.predict (test_fer_model, predict_folder), gpunet.preprocess and gpunet-predict.

Expected labels are computed independently: pixels decoded with Pillow in the test,
normalised and pushed through the weights with plain NumPy.
"""

import csv
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from gpunet import backend
from gpunet.cli.predict import main as predict_main
from gpunet.model import FullyConnectedNet, load_model
from gpunet.predict import FER2013_CLASSES, predict_folder, test_fer_model
from gpunet.preprocess import check_meta, normalize

MEAN, STD = 129.4, 65.0


def fer_model(seed=0, meta=True):
    m = FullyConnectedNet([32], input_dim=48 * 48, num_classes=7, seed=seed, weight_scale=0.05)
    m.set_params({"b2": np.linspace(-0.3, 0.3, 7).astype(np.float32)})
    if meta:
        m.meta = {
            "mean": [MEAN],
            "std": [STD],
            "image_shape": [1, 48, 48],
            "class_names": list(FER2013_CLASSES),
            "dataset": "fer2013",
        }
    return m


def reference_scores(model, pixels):
    """pixels: (N, C, H, W) uint8 -> scores (N, C) with NumPy only."""
    p = model.get_params()
    mean = np.asarray(model.meta["mean"])[:, None, None]
    std = np.asarray(model.meta["std"])[:, None, None]
    x = ((pixels.astype(np.float64) - mean) / std).reshape(len(pixels), -1)
    h = np.maximum(x @ p["W1"] + p["b1"], 0)
    return h @ p["W2"] + p["b2"]


def expected_pixels(path, size=(48, 48)):
    """Grey (1, H, W) uint8 of an image as Pillow reads it (centre-fit when the size differs)."""
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != size:
            im = ImageOps.fit(im, size, method=Image.Resampling.BILINEAR)
        return np.asarray(im, np.uint8)[None]


@pytest.fixture
def faces(tmp_path):
    """A folder of mixed face images, a non-image file, and the names in lexicographic order."""
    rng = np.random.default_rng(3)
    d = tmp_path / "faces"
    d.mkdir()
    grey = lambda n: Image.fromarray(rng.integers(0, 256, (n, n), dtype=np.uint8), "L")  # noqa: E731
    grey(48).save(d / "b_grey.png")
    grey(48).save(d / "a_grey.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), "RGB").save(d / "C_colour.png")
    grey(64).save(d / "d_big.png")
    grey(48).save(d / "10.png")
    grey(48).save(d / "2.png")
    (d / "notes.txt").write_text("not an image; skipped because of its extension\n")
    order = ["10.png", "2.png", "C_colour.png", "a_grey.jpg", "b_grey.png", "d_big.png"]  # code-point order
    return d, order


def test_test_fer_model_matches_independent_forward(faces, tmp_path):
    folder, order = faces
    model = fer_model()
    path = model.save(tmp_path / "fer.npz")
    expected = reference_scores(model, np.stack([expected_pixels(folder / n) for n in order])).argmax(1)
    for m in (str(path), path, model, load_model(path)):
        labels = test_fer_model(str(folder), m)
        assert isinstance(labels, np.ndarray) and labels.dtype.kind == "i" and labels.shape == (len(order),)
        np.testing.assert_array_equal(labels, expected)
        assert labels.min() >= 0 and labels.max() <= 6
    assert len(set(expected.tolist())) > 1, "a degenerate model would make this test too weak"


def test_predict_folder_order_probs_and_batching(faces):
    folder, order = faces
    model = fer_model(seed=1)
    files, labels, probs = predict_folder(folder, model, batch_size=4)  # two batches, one partial
    assert files == order
    scores = reference_scores(model, np.stack([expected_pixels(folder / n) for n in order]))
    e = np.exp(scores - scores.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(labels, scores.argmax(1))
    np.testing.assert_array_equal(predict_folder(folder, model, batch_size=1)[1], labels)


def test_colour_model_reads_rgb(tmp_path):
    d = tmp_path / "rgb"
    d.mkdir()
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(img, "RGB").save(d / "x.png")
    m = FullyConnectedNet([8], input_dim=3 * 8 * 8, num_classes=3, seed=2)
    m.meta = {
        "mean": [120.0, 110.0, 100.0],
        "std": [60.0, 50.0, 40.0],
        "image_shape": [3, 8, 8],
        "class_names": ["a", "b", "c"],
        "dataset": "cifar10",
    }
    _, labels, probs = predict_folder(d, m)
    ref = reference_scores(m, img.transpose(2, 0, 1)[None])
    assert labels[0] == ref.argmax()
    with pytest.raises(ValueError, match="FER2013"):
        test_fer_model(d, m)


def test_errors_name_the_problem(tmp_path, faces):
    folder, _ = faces
    model = fer_model()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: no image files"):
        test_fer_model(empty, model)
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        test_fer_model(only_text, model)
    with pytest.raises(ValueError, match="expected a folder"):
        test_fer_model(tmp_path / "missing", model)
    (folder / "zz_broken.png").write_bytes(b"this is not a PNG")
    with pytest.raises(ValueError, match="zz_broken.png: not a readable image"):
        test_fer_model(folder, model)
    with pytest.raises(ValueError, match="no_meta.npz: expected preprocessing meta"):
        test_fer_model(folder, fer_model(meta=False).save(tmp_path / "no_meta.npz"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        test_fer_model(folder, tmp_path / "nope.npz")


def test_normalize_contract(xp):
    meta = check_meta({"mean": [10.0, 20.0], "std": [2.0, 4.0], "image_shape": [2, 1, 3]})
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 1, 3)
    out = normalize(x, meta)
    assert backend.get_array_module(out) is xp and out.dtype == np.float32 and out.shape == (2, 6)
    ref = (
        (x.astype(np.float64) - np.array([10.0, 20.0])[:, None, None]) / np.array([2.0, 4.0])[:, None, None]
    ).reshape(2, 6)
    np.testing.assert_allclose(backend.to_numpy(out), ref, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(normalize(x.reshape(2, 6), meta)), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="x: expected images of shape"):
        normalize(x[:, :1], meta)
    with pytest.raises(ValueError, match="std"):
        check_meta({"mean": [1.0], "std": [0.0], "image_shape": [1, 2, 2]})


def test_predict_on_each_backend(xp, faces):
    """The same labels on NumPy and (with a GPU) CuPy, for a model living on that backend."""
    folder, order = faces
    model = fer_model(seed=4)
    expected = reference_scores(model, np.stack([expected_pixels(folder / n) for n in order])).argmax(1)
    model.to(backend.name())
    np.testing.assert_array_equal(test_fer_model(folder, model), expected)


# --------------------------------------------------------------------------- gpunet-predict


def read_csv(text):
    return list(csv.reader(io.StringIO(text)))


def test_cli_writes_csv_atomically(faces, tmp_path):
    folder, order = faces
    model = fer_model(seed=6)
    path = model.save(tmp_path / "fer.npz")
    out = tmp_path / "preds.csv"
    assert predict_main([str(path), str(folder), "-o", str(out), "--backend", "numpy", "-q"]) == 0
    rows = read_csv(out.read_text())
    assert rows[0] == ["file", "label", "class_name"] + [f"p_{n}" for n in FER2013_CLASSES]
    assert [r[0] for r in rows[1:]] == order
    labels = test_fer_model(folder, path)
    assert [int(r[1]) for r in rows[1:]] == labels.tolist()
    assert [r[2] for r in rows[1:]] == [FER2013_CLASSES[k] for k in labels]
    for r in rows[1:]:
        probs = [float(v) for v in r[3:]]
        assert all(len(v.split(".")[1]) == 6 for v in r[3:])
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert int(r[1]) == int(np.argmax(probs))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_cli_stdout_and_errors(faces, tmp_path, capsys):
    folder, order = faces
    path = fer_model().save(tmp_path / "fer.npz")
    assert predict_main([str(path), str(folder), "--decimals", "4", "--backend", "numpy", "-q"]) == 0
    rows = read_csv(capsys.readouterr().out)
    assert len(rows) == len(order) + 1 and len(rows[0]) == 3 + 7
    assert all(len(v.split(".")[1]) == 4 for v in rows[1][3:])

    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "preds.csv"
    assert predict_main([str(path), str(folder), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "zz_broken.jpg" in err and err.startswith("error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict_main([str(path), str(empty), "-q"]) == 2
    assert "no image files" in capsys.readouterr().err
    bad_model = tmp_path / "model.txt"
    bad_model.write_text("hello")
    assert predict_main([str(bad_model), str(folder), "-q"]) == 2
    assert "model.txt: not a gpunet model file" in capsys.readouterr().err
    assert predict_main([str(path), str(folder), "--decimals", "9", "-q"]) == 2
    assert "--decimals" in capsys.readouterr().err


def test_fer_class_order_matches_prep():
    """The official FER2013 order used by test_fer_model is the one gpunet-prep writes."""
    fer2013 = pytest.importorskip("data_prep.fer2013")
    assert tuple(fer2013.CLASS_NAMES) == FER2013_CLASSES
