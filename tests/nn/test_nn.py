"""gpunet.nn: layer objects and Sequential against numerical gradients, the plain kernels and real faces."""

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

import gpunet
from gpunet import backend, nn
from gpunet.layers import conv2d_forward, linear_forward
from gpunet.solver import Solver
from gradcheck import numerical_gradient

from common import DATASETS  # noqa: E402


def small_cnn(dtype=np.float64, seed=0, dropout=0.0, reg=0.0):
    layers = [
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
    ]
    layers += [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(layers + [nn.Linear(5, 3)], reg=reg, dtype=dtype, seed=seed, input_shape=(2, 8, 8))


def test_parameter_names_follow_positions(xp):
    m = small_cnn()
    assert list(m.params) == [
        "0.W",
        "0.b",
        "1.gamma",
        "1.beta",
        "4.W",
        "4.b",
        "7.W",
        "7.b",
        "8.gamma",
        "8.beta",
        "10.W",
        "10.b",
    ]
    assert m.params["0.W"].shape == (3, 2, 3, 3) and m.params["7.W"].shape == (16, 5)
    assert set(m.buffers) == {"1.running_mean", "1.running_var", "8.running_mean", "8.running_var"}
    assert m.params["0.W"] is m.layers[0].params["W"]  # the optimizer's in-place updates reach the layer


@pytest.mark.parametrize("reg", [0.0, 0.3])
def test_sequential_gradients_match_numerical(xp, reg):
    """The whole CNN (conv, BN in training mode, pool, linear, BN1d) against central differences."""
    m = small_cnn(reg=reg)
    rng = np.random.default_rng(0)
    X = xp.asarray(rng.standard_normal((4, 2, 8, 8)))
    y = xp.asarray(rng.integers(0, 3, 4))
    saved = {k: v.copy() for k, v in m.buffers.items()}

    def f():
        for k, v in saved.items():  # running statistics must not drift between evaluations
            m.buffers[k][...] = v
        return float(m.loss(X, y)[0])

    _, grads = m.loss(X, y)
    for name in m.params:
        num = numerical_gradient(f, m.params[name])
        # biases just before a batch norm have an exactly zero gradient: compare with an absolute floor
        np.testing.assert_allclose(backend.to_numpy(grads[name]), num, rtol=1e-5, atol=1e-8, err_msg=name)


def test_sequential_matches_the_plain_kernels(xp):
    """Scores in eval mode equal a hand composition of the layer functions."""
    m = nn.Sequential(
        [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)], dtype=np.float64, seed=1
    )
    X = xp.asarray(np.random.default_rng(2).standard_normal((5, 1, 6, 6)))
    p = m.params
    h = conv2d_forward(X, p["0.W"], p["0.b"])
    expected = linear_forward(xp.maximum(h, 0), p["3.W"], p["3.b"])
    np.testing.assert_allclose(backend.to_numpy(m.loss(X)), backend.to_numpy(expected), rtol=1e-12)
    Xc = X.copy()
    m.loss(X, xp.zeros(5, dtype=np.int64))
    np.testing.assert_array_equal(
        backend.to_numpy(X), backend.to_numpy(Xc)
    )  # the caller's batch is untouched


def test_train_and_eval_modes_differ_only_through_bn_and_dropout(xp):
    m = small_cnn(dropout=0.5)
    X = xp.asarray(np.random.default_rng(3).standard_normal((6, 2, 8, 8)))
    before = {k: backend.to_numpy(v).copy() for k, v in m.buffers.items()}
    s1, s2 = m.loss(X), m.loss(X)
    np.testing.assert_array_equal(backend.to_numpy(s1), backend.to_numpy(s2))  # eval: deterministic
    for k, v in m.buffers.items():
        np.testing.assert_array_equal(backend.to_numpy(v), before[k])  # eval: stats untouched
    m.loss(X, xp.zeros(6, dtype=np.int64))
    assert any(not np.array_equal(backend.to_numpy(v), before[k]) for k, v in m.buffers.items())


def test_save_and_load_give_identical_scores(xp, tmp_path):
    m = small_cnn(dtype=np.float32, dropout=0.3)
    X = xp.asarray(np.random.default_rng(4).standard_normal((7, 2, 8, 8)).astype(np.float32))
    for _ in range(3):  # move the running statistics off 0/1
        m.loss(X, xp.asarray(np.array([0, 1, 2, 0, 1, 2, 0])))
    m.meta = {"note": "hello"}
    m.save(tmp_path / "m.npz")
    m2 = gpunet.load_model(tmp_path / "m.npz")
    assert isinstance(m2, nn.Sequential) and m2.meta == {"note": "hello"}
    assert m2.config() == m.config()
    np.testing.assert_array_equal(backend.to_numpy(m2.loss(X)), backend.to_numpy(m.loss(X)))
    m.save(tmp_path / "h.npz", float16=True)
    m3 = gpunet.load_model(tmp_path / "h.npz")
    assert m3.params["0.W"].dtype == np.float32
    np.testing.assert_allclose(
        backend.to_numpy(m3.loss(X)), backend.to_numpy(m.loss(X)), rtol=0.05, atol=0.05
    )


def test_version_1_fc_files_still_load(tmp_path):
    """A file written exactly as gpunet 0.1 wrote it (format version 1, no 'kind')."""
    import json

    fc = gpunet.FullyConnectedNet([4], input_dim=6, num_classes=3, seed=0)
    desc = {
        "format": "gpunet-model",
        "version": 1,
        "config": {
            "hidden_dims": [4],
            "input_dim": 6,
            "num_classes": 3,
            "dropout": 0.0,
            "reg": 0.0,
            "dtype": "float32",
        },
        "meta": {},
    }
    arrays = {k: backend.to_numpy(v) for k, v in fc.params.items()}
    arrays["__meta__"] = np.frombuffer(json.dumps(desc).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v1.npz", **arrays)
    m = gpunet.load_model(tmp_path / "v1.npz")
    assert isinstance(m, gpunet.FullyConnectedNet)
    X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(backend.to_numpy(m.loss(X)), backend.to_numpy(fc.loss(X)))


def test_bad_layer_config_names_the_file(tmp_path):
    m = small_cnn()
    m.save(tmp_path / "m.npz")
    from gpunet.modelfile import read_npz, write_model

    arrays, desc = read_npz(tmp_path / "m.npz")
    desc["config"]["layers"][0]["type"] = "Conv3d"
    write_model(tmp_path / "bad.npz", desc["config"], arrays, {})
    with pytest.raises(ValueError, match=r"bad.npz: .*Conv3d"):
        gpunet.load_model(tmp_path / "bad.npz")


def test_to_moves_parameters_and_buffers(xp):
    m = small_cnn()
    m.to(backend.name())
    assert all(type(v) is type(xp.zeros(1)) for v in {**m.params, **m.buffers}.values())
    assert (
        m.params["0.W"] is m.layers[0].params["W"]
        and m.buffers["1.running_mean"] is m.layers[1].buffers["running_mean"]
    )


def test_seed_none_follows_numpys_global_generator():
    np.random.seed(395)
    a = small_cnn(seed=None)
    np.random.seed(395)
    b = small_cnn(seed=None)
    for k in a.params:
        np.testing.assert_array_equal(backend.to_numpy(a.params[k]), backend.to_numpy(b.params[k]))
    assert not np.array_equal(
        backend.to_numpy(small_cnn(seed=None).params["0.W"]), backend.to_numpy(a.params["0.W"])
    )


def fer_images(n=50):
    """The first ``n`` FER2013 training faces of the real download, as (n, 1, 48, 48) uint8 and labels."""
    from PIL import Image

    path = DATASETS / "fer2013-images.tar.gz"
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (set GPUNET_DATASETS to the folder holding it)")
    order = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    X, y = [], []
    with tarfile.open(path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-3] == "train" and parts[-2] in order:
                X.append(np.asarray(Image.open(tar.extractfile(member)).convert("L"), dtype=np.uint8))
                y.append(order.index(parts[-2]))
                if len(X) == n:
                    break
    return np.stack(X)[:, None], np.array(y)


def test_cnn_overfits_50_fer_images_under_the_solver():
    X, y = fer_images(50)
    Xf = (X.astype(np.float32) - X.mean()) / X.std()
    model = nn.Sequential(
        [
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 12 * 12, 64),
            nn.ReLU(),
            nn.Linear(64, 7),
        ],
        seed=0,
        input_shape=(1, 48, 48),
    )
    data = {"X_train": Xf, "y_train": y, "X_val": Xf, "y_val": y}
    solver = Solver(
        model,
        data,
        update_rule="adam",
        optim_config={"learning_rate": 1e-3},
        batch_size=25,
        num_epochs=20,
        verbose=False,
        seed=0,
    )
    solver.train()
    assert solver.train_acc_history[-1] == 1.0
    assert solver.check_accuracy(solver.val_loader) == 1.0


def test_relu_before_pool_applied_by_the_pool_gives_the_same_loss_and_gradients(xp):
    """Sequential has the pool apply a ReLU that precedes it (4x fewer values): the same function as a
    ReLU layer between them (kept apart here by a Dropout(0), which stops the fusion; one between the
    batch norm and the ReLU stops the batch norm + ReLU fusion too)."""

    def build(fused):
        apart = [] if fused else [nn.Dropout(0.0)]
        return nn.Sequential(
            [nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)]
            + apart
            + [nn.ReLU()]
            + apart
            + [nn.MaxPool2d(2), nn.Conv2d(3, 2, 3, padding=1), nn.ReLU()]
            + apart
            + [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)],
            dtype=np.float64,
            seed=5,
        )

    fused, plain = build(True), build(False)
    assert fused.plan[2][2] and fused.plan[3][0] == {"relu": True}
    assert fused.plan[1][0] == {"axis": 0}  # the pool takes the ReLU, not the batch norm
    assert not any(skipped for _, _, skipped in plain.plan) and plain.plan[5][0] == {"relu": False}
    rng = np.random.default_rng(6)
    X = xp.asarray(rng.standard_normal((5, 1, 8, 8)))
    X[0, 0, :4, :4] = 0.0  # flat regions: ties inside windows
    y = xp.asarray(rng.integers(0, 3, 5))
    (lf, gf), (lp, gp) = fused.loss(X, y), plain.loss(X, y)
    assert float(lf) == pytest.approx(float(lp), rel=1e-12)
    names = {k: k for k in gf}
    renamed = {
        "0.W": "0.W",
        "0.b": "0.b",
        "1.gamma": "1.gamma",
        "1.beta": "1.beta",
        "4.W": "6.W",
        "4.b": "6.b",
        "8.W": "11.W",
        "8.b": "11.b",
    }
    assert set(names) == set(renamed)
    for k, kp in renamed.items():
        np.testing.assert_allclose(backend.to_numpy(gf[k]), backend.to_numpy(gp[kp]), rtol=1e-10, atol=1e-12)


def test_sequential_sets_nothing_on_its_layers(xp):
    """A layer behaves the same alone, in one model or in two: the container keeps its decisions in its
    plan."""
    layers = [
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ]
    before = [dict(vars(layer)) for layer in layers]
    model = nn.Sequential(layers, dtype=np.float64, seed=1)
    for layer, was in zip(layers, before):
        now = vars(layer)
        assert set(now) == set(was), (layer, set(now) ^ set(was))
        assert {k: v for k, v in now.items() if k not in ("params", "buffers")} == {
            k: v for k, v in was.items() if k not in ("params", "buffers")
        }, layer
    X = xp.asarray(np.random.default_rng(2).standard_normal((3, 1, 8, 8)))
    alone = layers[0].forward(X, train=False)  # still NCHW in, NCHW out, as alone
    assert alone.shape == (3, 2, 8, 8)
    assert model.loss(X).shape == (3, 3)


def test_layouts_and_axes_are_checked():
    with pytest.raises(ValueError, match="layout"):
        nn.Flatten().forward(np.zeros((2, 3, 4, 4)), layout="NHWC")
    with pytest.raises(ValueError, match="axis"):
        nn.BatchNorm2d(3).forward(np.zeros((2, 3, 4, 4)), axis=2)
    with pytest.raises(ValueError, match="needs a Flatten"):
        nn.Sequential([nn.Conv2d(1, 2, 3), nn.Linear(2, 2)])


def test_a_write_into_a_kept_array_fails_where_it_happens():
    """GPUNET_CHECK_SAVED (on in the test suite): arrays kept for a backward are read-only until it ran."""
    from gpunet.nn import sequential

    assert sequential.CHECK_SAVED
    model = nn.Sequential([nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)], dtype=np.float64, seed=0)
    X, y = np.random.default_rng(0).standard_normal((5, 4)), np.array([0, 1, 0, 1, 1])
    model.forward(X, train=True)
    with pytest.raises(ValueError, match="read-only"):
        model.layers[1].out[...] = 0  # the ReLU's output, which its backward reads
    loss, grads = model.loss(X, y)  # a whole step thaws what it froze
    assert model.layers[1].out.flags.writeable and set(grads) == set(model.params)


def test_layers_work_alone_in_nchw(xp):
    """A layer used without Sequential has parameters and speaks (N, C, H, W), like the kernels."""
    from gpunet.layers import conv2d_forward

    rng = np.random.default_rng(8)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    conv.params = {k: xp.asarray(v.astype(np.float64)) for k, v in conv.params.items()}
    X = xp.asarray(rng.standard_normal((4, 2, 5, 5)))
    out = conv.forward(X, train=True)
    np.testing.assert_allclose(
        backend.to_numpy(out),
        backend.to_numpy(conv2d_forward(X, conv.params["W"], conv.params["b"], padding=1)),
        rtol=1e-12,
    )
    dX = conv.backward(xp.ones_like(out))
    assert dX.shape == X.shape and set(conv.grads) == {"W", "b"}
    bn = nn.BatchNorm2d(3)
    bn.init(None, np.float64)
    bn.to(xp.__name__)  # alone, a layer moves with its own to()
    assert bn.forward(out, train=True).shape == out.shape
    assert backend.get_array_module(bn.buffers["running_mean"]) is xp
    lin = nn.Linear(6, 2).to(xp.__name__)
    assert lin.params["W"].shape == (6, 2) and lin.forward(xp.asarray(np.ones((3, 6), np.float32))).shape == (
        3,
        2,
    )
