"""gpunet.export and gpunet-export: the ONNX graph, run by onnxruntime, gives gpunet's probabilities.

The oracle is gpunet's own inference path (the model's normalisation, its forward
pass, softmax) on the same pixels, run by an independent engine (onnxruntime);
the CNN case also sets batch-norm statistics away from their defaults so that the
folded normalisation is exercised.
"""

import json
import sys

import numpy as np
import pytest

from gpunet import backend
from gpunet.cli.export import main as export_main
from gpunet.export import to_onnx
from gpunet.model import FullyConnectedNet, load_model
from gpunet.predict import softmax
from gpunet.preprocess import normalize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _numpy_backend():
    previous = backend.selected()
    backend.use("numpy")
    yield
    backend.use(previous)


def gpunet_probs(model, pixels):
    """(N, classes) probabilities the gpunet way: the model's meta normalisation, forward, softmax."""
    x = normalize(pixels, model.meta, model.dtype, np)
    return backend.to_numpy(softmax(model.loss(x).astype(np.float64)))


def onnx_probs(model_bytes, pixels):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["probabilities"], {"pixels": pixels.astype(np.float32)})
    return out


def pixels(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + tuple(shape)).astype(np.float32)


def fc_model():
    m = FullyConnectedNet([20, 12], input_dim=3 * 6 * 5, num_classes=4, seed=3)
    m.set_params({"b1": np.linspace(-0.2, 0.2, 20, dtype=np.float32)})
    m.meta = {
        "mean": [125.0, 116.0, 104.0],
        "std": [63.0, 62.0, 66.0],
        "image_shape": [3, 6, 5],
        "class_names": ["a", "b", "c", "d"],
        "dataset": "toy",
    }
    return m


def test_cli_exports_fc_model_that_onnxruntime_runs(tmp_path, capsys):
    m = fc_model()
    m.save(tmp_path / "fc.npz")
    rc = export_main([str(tmp_path / "fc.npz"), "-o", str(tmp_path / "fc.onnx"), "-q"])
    assert rc == 0, capsys.readouterr().err
    data = (tmp_path / "fc.onnx").read_bytes()
    onnx.checker.check_model(onnx.load_from_string(data))
    loaded = load_model(tmp_path / "fc.npz")
    for n in (1, 7):  # the batch dimension is free
        x = pixels(n, (3, 6, 5), seed=n)
        np.testing.assert_allclose(onnx_probs(data, x), gpunet_probs(loaded, x), atol=1e-4, rtol=0)
    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert json.loads(props["class_names"]) == ["a", "b", "c", "d"]
    assert json.loads(props["mean"]) == [125.0, 116.0, 104.0]
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp*"))


def cnn_model(nn):
    layers = [
        nn.Conv2d(1, 4, 3, stride=1, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=0),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 10),
        nn.BatchNorm1d(10),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(10, 7),
    ]
    m = nn.Sequential(layers, seed=0, input_shape=(1, 12, 12))
    rng = np.random.default_rng(1)
    for i in (1, 8):  # batch norm away from the identity
        d = m.params[f"{i}.gamma"].shape[0]
        m.set_params(
            {
                f"{i}.gamma": rng.uniform(0.5, 1.5, d).astype(np.float32),
                f"{i}.beta": rng.normal(0, 0.3, d).astype(np.float32),
                f"{i}.running_mean": rng.normal(0, 0.5, d).astype(np.float32),
                f"{i}.running_var": rng.uniform(0.5, 2.0, d).astype(np.float32),
            }
        )
    m.meta = {
        "mean": [129.0],
        "std": [64.0],
        "image_shape": [1, 12, 12],
        "class_names": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
        "dataset": "fer2013",
    }
    return m


def test_cnn_export_matches_gpunet(tmp_path, capsys):
    nn = pytest.importorskip("gpunet.nn")
    m = cnn_model(nn)
    x = pixels(5, (1, 12, 12), seed=2)
    np.testing.assert_allclose(
        onnx_probs(to_onnx(m).SerializeToString(), x), gpunet_probs(m, x), atol=1e-4, rtol=0
    )
    m.save(tmp_path / "cnn.npz")  # and through the command, from the file
    assert export_main([str(tmp_path / "cnn.npz"), "-o", str(tmp_path / "cnn.onnx"), "-q"]) == 0, (
        capsys.readouterr().err
    )
    data = (tmp_path / "cnn.onnx").read_bytes()
    np.testing.assert_allclose(
        onnx_probs(data, x), gpunet_probs(load_model(tmp_path / "cnn.npz"), x), atol=1e-4, rtol=0
    )


class _Unknown:
    """A stand-in Sequential with a layer type the exporter does not know."""

    params, buffers, num_classes, input_dim = {}, {}, 2, 4
    meta = {"mean": [0.0], "std": [1.0], "image_shape": [1, 2, 2], "class_names": ["x", "y"]}

    def config(self):
        return {"kind": "sequential", "layers": [{"type": "Flatten"}, {"type": "Tanh"}]}


def test_unknown_layer_is_named():
    with pytest.raises(ValueError, match=r"model: layer 1 has type 'Tanh'"):
        to_onnx(_Unknown())


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert export_main([str(tmp_path / "none.npz"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none.npz" in err[0]
    m = fc_model()
    m.meta = {}
    m.save(tmp_path / "nometa.npz")
    assert export_main([str(tmp_path / "nometa.npz"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "mean, std and image_shape" in capsys.readouterr().err
    fc_model().save(tmp_path / "fc.npz")
    monkeypatch.setitem(sys.modules, "onnx", None)  # the [onnx] extra is not installed
    assert export_main([str(tmp_path / "fc.npz"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: ONNX export needs onnx: pip install 'gpunet[onnx]'"]
    assert not (tmp_path / "x.onnx").exists()
