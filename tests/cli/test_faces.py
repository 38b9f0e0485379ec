"""gpunet.detect_emotions, gpunet.pretrained and gpunet-predict --faces / --annotate.

Photos are real ones that ship with scikit-image (the astronaut Eileen Collins; the
cat ``chelsea`` as a photo without a human face). Oracles: a face box marked by
hand on the astronaut photo; crops made by the training pipeline itself
(``data_prep.images.decode_image`` of the cropped region) pushed through the
weights with plain NumPy; and the packaged-model default checked against an
explicit model path.
"""

import csv
import io
import sys

import numpy as np
import pytest
from PIL import Image

import gpunet
from gpunet import backend, pretrained
from gpunet.cli.predict import main as predict_main
from gpunet.faces import FER_EMOTIONS, detect_emotions, read_photo
from gpunet.model import FullyConnectedNet
from gpunet.predict import test_fer_model

skdata = pytest.importorskip("skimage.data")

HAND_BOX = (180, 70, 90, 95)  # x, y, w, h of the astronaut's face, marked by hand (hairline to chin)
MEAN, STD = 129.4, 65.0


@pytest.fixture(autouse=True)
def _numpy_backend():
    previous = backend.selected()
    backend.use("numpy")
    yield
    backend.use(previous)


def fer_model(seed=0, names=FER_EMOTIONS):
    m = FullyConnectedNet([32], input_dim=48 * 48, num_classes=len(names), seed=seed, weight_scale=0.05)
    m.meta = {
        "mean": [MEAN],
        "std": [STD],
        "image_shape": [1, 48, 48],
        "class_names": [n.capitalize() for n in names],
        "dataset": "fer2013",
    }
    return m


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


def reference_probs(model, photo, box):
    """Probabilities of one face: the crop goes through the training data's own decoder."""
    from data_prep.images import decode_image

    x, y, w, h = box
    buf = io.BytesIO()
    Image.fromarray(photo).crop((x, y, x + w, y + h)).save(buf, format="PNG")
    pix = decode_image(buf.getvalue(), "crop", (48, 48), resize=True, grayscale=True)  # (48, 48) uint8
    p = model.get_params()
    z = ((pix.astype(np.float64) - MEAN) / STD).reshape(1, -1)
    s = np.maximum(z @ p["W1"] + p["b1"], 0) @ p["W2"] + p["b2"]
    e = np.exp(s - s.max())
    return (e / e.sum())[0]


def test_astronaut_face_is_found_and_classified_as_in_training():
    photo, model = skdata.astronaut(), fer_model()
    faces = gpunet.detect_emotions(photo, model)
    assert len(faces) == 1
    box = faces[0]["box"]
    assert iou(box, HAND_BOX) > 0.6, box
    emo = faces[0]["emotions"]
    assert list(emo) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert all(isinstance(v, float) for v in emo.values()) and sum(emo.values()) == pytest.approx(1.0)
    np.testing.assert_allclose(list(emo.values()), reference_probs(model, photo, box), atol=1e-5)


def test_path_grey_and_array_inputs_agree(tmp_path):
    photo, model = skdata.astronaut(), fer_model()
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    from_array = detect_emotions(photo, model)
    assert detect_emotions(tmp_path / "astronaut.png", model) == from_array
    assert detect_emotions(str(tmp_path / "astronaut.png"), model) == from_array
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    assert detect_emotions(grey, model) == from_array  # a grey model sees the same grey crop


def test_faces_come_largest_first():
    photo = skdata.astronaut()
    small = np.asarray(Image.fromarray(photo).resize((320, 320), Image.Resampling.BILINEAR))
    canvas = np.full((512, 512 + 320, 3), 200, np.uint8)
    canvas[:, 320:] = photo
    canvas[96:416, :320] = small
    faces = detect_emotions(canvas, fer_model())
    assert len(faces) == 2
    big, little = (f["box"] for f in faces)
    assert big[2] * big[3] > little[2] * little[3]
    assert iou(big, (HAND_BOX[0] + 320,) + HAND_BOX[1:]) > 0.6
    scaled = tuple(round(v * 320 / 512) for v in HAND_BOX)
    assert iou(little, (scaled[0], scaled[1] + 96) + scaled[2:]) > 0.5


def test_no_face_in_a_cat_photo():
    assert detect_emotions(skdata.chelsea(), fer_model()) == []


def test_bad_inputs_name_what_was_expected(tmp_path):
    model = fer_model()
    with pytest.raises(ValueError, match=r"uint8 array of shape \(H, W\) or \(H, W, 3\), got float64"):
        detect_emotions(np.zeros((64, 64)), model)
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        detect_emotions(tmp_path / "nothing.png", model)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        detect_emotions(tmp_path / "bad.png", model)
    with pytest.raises(ValueError, match="expected a FER2013 model"):
        detect_emotions(skdata.astronaut(), fer_model(names=("a", "b", "c")))


def _png_declaring(width, height) -> bytes:
    """A grey PNG whose header declares width x height pixels (its data: four rows of zeros)."""
    import struct
    import zlib

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_read_photo_takes_the_bytes_of_a_file_as_it_takes_the_file(tmp_path):
    photo = skdata.astronaut()
    for fmt, name in [("PNG", "a.png"), ("JPEG", "a.jpg")]:
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format=fmt)
        (tmp_path / name).write_bytes(buf.getvalue())
        from_bytes = read_photo(buf.getvalue())
        assert np.array_equal(from_bytes, read_photo(tmp_path / name))
        if fmt == "PNG":
            assert np.array_equal(from_bytes, photo)  # lossless: the very pixels
    with pytest.raises(ValueError, match=r"^up\.txt: not a readable image \(not JPEG or PNG\)$"):
        read_photo(b"some text", name="up.txt", formats=("JPEG", "PNG"))
    with pytest.raises(ValueError, match=r"^photo: not a readable image \(.*truncated"):
        read_photo(buf.getvalue()[: len(buf.getvalue()) // 2])  # the JPEG, cut in half


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # Pillow's warning stays in
def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path):
    """Over Pillow's MAX_IMAGE_PIXELS (where Pillow only warns) and over twice it (where Pillow raises
    its own DecompressionBombError): one ValueError either way, as for any unreadable photo, and no
    warning (a refusal says it all; gpunet-serve's stderr would fill with them)."""
    for side in (10_000, 20_000):
        path = tmp_path / f"bomb{side}.png"
        path.write_bytes(_png_declaring(side, side))
        with pytest.raises(ValueError, match=rf"bomb{side}\.png: refused, too many pixels"):
            detect_emotions(path, fer_model())
    with pytest.raises(ValueError, match=r"512 x 512 pixels, more than 100,000"):
        read_photo(_png_declaring(512, 512), max_pixels=100_000)  # a limit of one's own


def test_bombs_refused_from_many_threads_leave_the_warning_filters_as_they_were():
    """The warning is silenced for the decode only: after refusals from 8 threads at once (as
    gpunet-serve decodes) the process's filter list is as it was (a plain ``filterwarnings`` would
    leave an entry behind, and unlocked ``catch_warnings`` blocks may, when their exits cross)."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    bomb, before = _png_declaring(10_000, 10_000), list(warnings.filters)

    def refuse(i):
        with pytest.raises(ValueError, match="too many pixels") as e:
            read_photo(bomb, name=f"bomb{i}.png")
        return str(e.value)

    with ThreadPoolExecutor(max_workers=8) as pool:
        said = list(pool.map(refuse, range(200)))
    assert said[7].startswith("bomb7.png: refused") and warnings.filters == before


def test_missing_extra_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.feature", None)
    with pytest.raises(
        ImportError, match=r"^face detection needs scikit-image: pip install 'gpunet\[faces\]'$"
    ):
        detect_emotions(skdata.astronaut(), fer_model())


# ------------------------------------------------------------------ the packaged model


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """A small FER model standing in for the packaged file."""
    path = tmp_path / "fer2013.npz"
    fer_model(seed=4).save(path)
    monkeypatch.setattr(pretrained, "path", lambda: path)
    return path


def test_defaults_use_the_packaged_model(packaged, tmp_path):
    photo = skdata.astronaut()
    assert detect_emotions(photo) == detect_emotions(photo, packaged)
    assert pretrained.load().get_params()["W1"].shape == (48 * 48, 32)
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / f"{i}.png")
    np.testing.assert_array_equal(test_fer_model(folder), test_fer_model(folder, packaged))


def test_absent_packaged_model_says_what_to_do(monkeypatch):
    monkeypatch.setattr(pretrained, "FILE_NAME", "absent.npz")
    with pytest.raises(
        FileNotFoundError, match=r"absent.npz: the packaged FER2013 model is missing.*model=PATH"
    ):
        detect_emotions(skdata.astronaut())


def _real_packaged():
    try:
        return pretrained.path()
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_real_packaged() is None, reason="gpunet/pretrained/fer2013.npz not shipped yet")
def test_real_packaged_model_reads_a_smile():
    path = _real_packaged()
    assert path.stat().st_size <= 5 * 1024 * 1024
    model = pretrained.load()
    assert model.num_classes == 7 and model.meta["image_shape"] == [1, 48, 48]
    faces = detect_emotions(skdata.astronaut())
    assert len(faces) == 1
    ranked = sorted(faces[0]["emotions"], key=faces[0]["emotions"].get, reverse=True)
    assert "happy" in ranked[:2], faces[0]["emotions"]  # she is smiling broadly


# ------------------------------------------------------------------ gpunet-predict --faces


def test_cli_faces_csv_and_annotated_copies(tmp_path, capsys):
    photos, ann = tmp_path / "photos", tmp_path / "ann"
    photos.mkdir()
    Image.fromarray(skdata.astronaut()).save(photos / "astronaut.jpg", quality=95)
    Image.fromarray(skdata.chelsea()).save(photos / "cat.png")
    (photos / "notes.txt").write_text("not a photo")
    model = fer_model()
    model.save(tmp_path / "m.npz")
    rc = predict_main(
        [
            str(tmp_path / "m.npz"),
            str(photos),
            "--faces",
            "--annotate",
            str(ann),
            "-o",
            str(tmp_path / "faces.csv"),
            "--backend",
            "numpy",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "1 face(s) in 2 photo(s), 1 without a face" in capsys.readouterr().err
    rows = list(csv.reader(open(tmp_path / "faces.csv", encoding="utf-8")))
    assert rows[0] == ["file", "face", "x", "y", "w", "h", "label", "class_name"] + [
        f"p_{n}" for n in FER_EMOTIONS
    ]
    assert len(rows) == 2 and rows[1][:2] == ["astronaut.jpg", "0"]
    want = detect_emotions(photos / "astronaut.jpg", model)[0]
    assert [int(v) for v in rows[1][2:6]] == want["box"]
    p = [want["emotions"][n] for n in FER_EMOTIONS]
    assert int(rows[1][6]) == int(np.argmax(p)) and rows[1][7] == FER_EMOTIONS[int(np.argmax(p))]
    np.testing.assert_allclose([float(v) for v in rows[1][8:]], p, atol=1e-6)
    assert sorted(f.name for f in ann.iterdir()) == ["astronaut.jpg", "cat.png"]
    with Image.open(ann / "astronaut.jpg") as a, Image.open(photos / "astronaut.jpg") as o:
        assert a.size == o.size
        x, y, w, h = want["box"]
        edge = np.asarray(a.convert("RGB"))[y + h // 2, x]  # the box's left edge is drawn red
        assert edge[0] > 200 and edge[1] < 100 and edge[2] < 100
    with Image.open(ann / "cat.png") as a:  # no face: an unchanged copy
        assert np.array_equal(np.asarray(a.convert("RGB")), skdata.chelsea())


def test_cli_faces_errors_are_one_line(tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skdata.astronaut()).save(photos / "a.png")
    fer_model().save(tmp_path / "m.npz")
    rc = predict_main([str(tmp_path / "m.npz"), str(photos), "--annotate", str(photos)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "would overwrite the photos" in err[0]
    monkeypatch.setitem(sys.modules, "skimage.feature", None)
    rc = predict_main([str(tmp_path / "m.npz"), str(photos), "--faces", "-o", str(tmp_path / "f.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: face detection needs scikit-image: pip install 'gpunet[faces]'"]
    assert not (tmp_path / "f.csv").exists()


def test_cli_default_model_is_the_packaged_one(packaged, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skdata.astronaut()).save(photos / "a.png")
    for model in ("default", str(packaged)):
        assert (
            predict_main(
                [
                    model,
                    str(photos),
                    "--faces",
                    "-o",
                    str(tmp_path / f"{len(model)}.csv"),
                    "-q",
                    "--backend",
                    "numpy",
                ]
            )
            == 0
        ), capsys.readouterr().err
    assert (tmp_path / "7.csv").read_text() == (tmp_path / f"{len(str(packaged))}.csv").read_text()
    assert len((tmp_path / "7.csv").read_text().splitlines()) == 2
