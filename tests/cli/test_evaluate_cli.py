"""gpunet-evaluate end to end on a tiny HDF5 file, gpunet.predict.evaluate, and gpunet.plots.

Expected numbers are computed independently in the test: the file's pixels are
normalised with the model's meta and pushed through the weights with plain NumPy.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from gpunet import backend
from gpunet.cli.evaluate import main as evaluate_main
from gpunet.data import h5file as fmt
from gpunet.model import FullyConnectedNet
from gpunet.plots import confusion_heatmap, training_curves
from gpunet.predict import evaluate
from gpunet.preprocess import preprocess_meta_from_h5

from common import REPO as ROOT

NAMES = ["cat", "dog", "owl"]
SHAPE = (1, 6, 6)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_h5(path, n=50, shape=SHAPE, seed=0, mean=100.0, std=50.0, names=NAMES):
    """A toy gpunet HDF5 file (train, test), written through the format's owner."""
    rng = np.random.default_rng(seed)
    with fmt.create(
        path,
        dataset="toy",
        class_names=names,
        mean=np.full(shape[0], mean),
        std=np.full(shape[0], std),
        image_shape=shape,
    ) as f:
        for split, m in (("train", n), ("test", n + 7)):
            fmt.write_split(
                f,
                split,
                rng.integers(0, 256, (m,) + shape, dtype=np.uint8),
                rng.integers(0, len(names), m).astype(np.int64),
                8,
            )
    return path


def make_model(seed=0, meta=True, shape=SHAPE):
    m = FullyConnectedNet([12], input_dim=int(np.prod(shape)), num_classes=len(NAMES), seed=seed)
    if meta:
        # deliberately not the file's mean/std: the model's own preprocessing must be used
        m.meta = {
            "mean": [120.0] * shape[0],
            "std": [40.0] * shape[0],
            "image_shape": list(shape),
            "class_names": NAMES,
            "dataset": "toy",
        }
    return m


def reference(model, h5_path, split="test", mean=None, std=None):
    """(y_true, y_pred) with h5py and NumPy only."""
    with h5py.File(h5_path, "r") as f:
        x, y = f[split]["x"][()], f[split]["y"][()]
    mean = model.meta["mean"][0] if mean is None else mean
    std = model.meta["std"][0] if std is None else std
    p = model.get_params()
    h = np.maximum(((x.astype(np.float64) - mean) / std).reshape(len(x), -1) @ p["W1"] + p["b1"], 0)
    return y, (h @ p["W2"] + p["b2"]).argmax(1)


@pytest.fixture
def files(tmp_path):
    h5 = write_h5(tmp_path / "toy.h5")
    model = make_model()
    return h5, model.save(tmp_path / "model.npz"), model


def assert_png(path):
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()


def test_evaluate_library_uses_model_meta(files, xp):
    h5, path, model = files
    y_ref, p_ref = reference(model, h5)
    y_true, y_pred = evaluate(str(path), h5, "test", batch_size=16)
    assert backend.get_array_module(y_pred) is xp
    np.testing.assert_array_equal(backend.to_numpy(y_true), y_ref)
    np.testing.assert_array_equal(backend.to_numpy(y_pred), p_ref)
    assert len(set(p_ref.tolist())) > 1


def test_evaluate_without_meta_falls_back_to_file_stats(files, tmp_path):
    h5, _, _ = files
    model = make_model(meta=False)
    _, p_ref = reference(model, h5, mean=100.0, std=50.0)
    np.testing.assert_array_equal(backend.to_numpy(evaluate(model, h5, "test")[1]), p_ref)


def test_cli_json_plot_and_numbers(files, tmp_path, capsys):
    h5, path, model = files
    js, png = tmp_path / "r.json", tmp_path / "cm.png"
    rc = evaluate_main(
        [
            str(path),
            "--data",
            str(h5),
            "--json",
            str(js),
            "--plot",
            str(png),
            "--backend",
            "numpy",
            "--batch-size",
            "10",
        ]
    )
    assert rc == 0
    y, p = reference(model, h5)
    rep = json.loads(js.read_text())
    assert rep["accuracy"] == pytest.approx(np.mean(y == p))
    assert rep["num_samples"] == len(y) and rep["split"] == "test"
    cm = np.zeros((3, 3), int)
    for t, q in zip(y, p):
        cm[t, q] += 1
    assert rep["confusion_matrix"] == cm.tolist()
    assert [c["support"] for c in rep["per_class"]] == cm.sum(1).tolist()
    assert_png(png)
    text = capsys.readouterr().out
    assert f"{rep['accuracy']:.3f}" in text and "macro avg" in text and "owl" in text


def test_cli_json_to_stdout_and_out_dir(files, tmp_path, capsys):
    h5, path, model = files
    out = tmp_path / "results"
    assert (
        evaluate_main(
            [
                str(path),
                "--data",
                str(h5),
                "--split",
                "train",
                "--json",
                "-",
                "--out",
                str(out),
                "--counts",
                "-q",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)  # stdout holds only the JSON
    y, p = reference(model, h5, split="train")
    assert rep["accuracy"] == pytest.approx(np.mean(y == p))
    assert_png(out / "confusion_train.png")
    assert not (out / "report_train.json").exists()  # the JSON went to stdout instead


def test_cli_errors_are_one_line(files, tmp_path, capsys):
    h5, path, _ = files
    other = write_h5(tmp_path / "big.h5", shape=(1, 8, 8))
    not_h5 = tmp_path / "data.txt"
    not_h5.write_text("no")
    cases = [
        ([str(path), "--data", str(other)], ["big.h5", "(1, 8, 8)", "(1, 6, 6)"]),
        ([str(tmp_path / "missing.npz"), "--data", str(h5)], ["missing.npz"]),
        ([str(not_h5), "--data", str(h5)], ["data.txt", "not a gpunet model file"]),
        ([str(path), "--data", str(tmp_path / "missing.h5")], ["missing.h5"]),
        ([str(path), "--data", str(not_h5)], ["data.txt", "HDF5"]),
        ([str(path), "--data", str(h5), "--split", "val"], ["toy.h5", "'val'"]),
        ([str(path), "--data", str(h5), "--batch-size", "0"], ["--batch-size"]),
    ]
    for argv, needles in cases:
        assert evaluate_main(argv + ["-q"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
        for s in needles:
            assert s in err, (s, err)
    four = tmp_path / "four.h5"
    write_h5(four, names=NAMES + ["eel"])
    assert evaluate_main([str(path), "--data", str(four), "-q"]) == 2
    assert "4 classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate_main([str(path), "--data", str(h5), "--backend", "tpu"])
    assert e.value.code == 2


def test_cli_subprocess_exit_codes(files, tmp_path):
    h5, path, _ = files
    env = dict(os.environ, GPUNET_BACKEND="numpy", PYTHONPATH=str(ROOT))
    ok = subprocess.run(
        [sys.executable, "-m", "gpunet.cli.evaluate", str(path), "--data", str(h5), "--json", "-", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert 0.0 <= json.loads(ok.stdout)["accuracy"] <= 1.0
    bad = write_h5(tmp_path / "bad.h5", shape=(3, 6, 6))
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(path), "--data", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "bad.h5" in r.stderr and "(3, 6, 6)" in r.stderr


def test_preprocess_meta_from_h5(files, tmp_path):
    h5, _, _ = files
    meta = preprocess_meta_from_h5(h5)
    assert meta == {
        "mean": [100.0],
        "std": [50.0],
        "image_shape": [1, 6, 6],
        "class_names": NAMES,
        "dataset": "toy",
    }
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f.attrs["dataset"] = "x"
    with pytest.raises(ValueError, match="plain.h5"):
        preprocess_meta_from_h5(plain)


# --------------------------------------------------------------------------- plots


def test_plots_write_valid_pngs(tmp_path):
    cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 3]])
    for normalize in (True, False):
        assert_png(confusion_heatmap(cm, NAMES, tmp_path / f"cm{normalize}.png", normalize=normalize))
    hist = {"loss": list(np.linspace(2, 0.5, 40)), "train_acc": [0.3, 0.5, 0.6], "val_acc": [0.3, 0.4, 0.45]}
    assert_png(training_curves(hist, tmp_path / "curves.png"))
    assert_png(training_curves({}, tmp_path / "empty.png"))
    with pytest.raises(ValueError, match="cm"):
        confusion_heatmap(cm, NAMES[:2], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["group", "scalar"])
def test_a_split_whose_x_is_not_an_array_is_one_line(files, tmp_path, capsys, kind):
    """Issue 24 #13: /test/x a group (or a scalar) gave "AttributeError: 'Group' object has no
    attribute 'shape'"."""
    h5, path, _ = files
    bad = tmp_path / f"x_is_{kind}.h5"
    bad.write_bytes(Path(h5).read_bytes())
    with h5py.File(bad, "a") as f:
        del f["test"]["x"]
        if kind == "group":
            f["test"].create_group("x")
        else:
            f["test"]["x"] = 3
    assert evaluate_main([str(path), "--data", str(bad), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Error" not in err.split(":")[0], err
    assert bad.name in err and "/test/x" in err, err
