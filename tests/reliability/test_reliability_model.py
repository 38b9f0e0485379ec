"""Issue 13, model files: every bad model file is one clear error naming the file, through the API
(a ValueError) and through gpunet-evaluate / gpunet-predict (one ``error:`` line, exit 2); nothing
is allocated from the description or read from an unexpected member before it is checked.
The bad files come from ``bad_models.variants``, each one defect away from a good model."""

import os
import tracemalloc
import zipfile

import pytest
from bad_models import variants, write_fer_inputs

from gpunet import modelspec, nn, pretrained
from gpunet.cli.evaluate import main as evaluate_main
from gpunet.cli.predict import main as predict_main
from gpunet.model import FullyConnectedNet, load_model
from gpunet.modelfile import ModelFileError
from gpunet.predict import FER2013_CLASSES, test_fer_model

META = {
    "mean": [129.0],
    "std": [65.0],
    "image_shape": [1, 48, 48],
    "class_names": list(FER2013_CLASSES),
    "dataset": "fer2013",
}


def fer_fc():
    m = FullyConnectedNet([8], input_dim=48 * 48, num_classes=7, seed=0)
    m.meta = dict(META)
    return m


def fer_cnn():
    m = nn.Sequential(
        [
            nn.Conv2d(1, 2, 3, padding=1),
            nn.BatchNorm2d(2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * 24 * 24, 7),
        ],
        seed=0,
        input_shape=(1, 48, 48),
    )
    m.meta = dict(META)
    return m


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """[(kind, name, path, bad)] for both model kinds, plus a face folder and an HDF5 file they fit."""
    d = tmp_path_factory.mktemp("models")
    out = []
    for kind, model in (("fc", fer_fc()), ("cnn", fer_cnn())):
        good = model.save(d / f"{kind}.npz")
        out += [(kind, name, path, bad) for name, path, bad in variants(good, d / kind, compress_bomb_mb=8)]
    faces, h5 = write_fer_inputs(d)
    return out, faces, h5


def test_every_bad_model_file_is_a_value_error_naming_the_file(cases):
    files, faces, _ = cases
    assert len(files) > 140
    for kind, name, path, bad in files:
        for api in (load_model, lambda p: test_fer_model(faces, p)):
            if not bad:
                api(path)
                continue
            with pytest.raises((ValueError, FileNotFoundError)) as e:  # never KeyError, TypeError, ...
                api(path)
            assert os.fspath(path) in str(e.value), (kind, name, str(e.value))
            assert name == "missing file" or isinstance(e.value, ModelFileError), (kind, name, type(e.value))


def _cli_outcome(main, argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err.strip().splitlines()[-1] if err.strip() else "", "Traceback" in err


def test_evaluate_and_predict_refuse_every_bad_model_in_one_line(cases, capsys, tmp_path):
    files, faces, h5 = cases
    for kind, name, path, bad in files:
        for main, argv in (
            (evaluate_main, [str(path), "--data", str(h5)]),
            (predict_main, [str(path), str(faces), "-o", str(tmp_path / "p.csv")]),
        ):
            rc, last, tb = _cli_outcome(main, [*argv, "--backend", "numpy", "-q"], capsys)
            if bad:
                assert rc == 2 and last.startswith("error:") and str(path) in last and not tb, (
                    kind,
                    name,
                    rc,
                    last,
                )
            else:
                assert rc == 0, (kind, name, last)


def test_huge_sizes_in_the_description_allocate_nothing(cases):
    files = {(k, n): p for k, n, p, _ in cases[0]}
    for key in (
        ("fc", "hidden_dims [1000000]"),
        ("cnn", "linear out 1000000"),
        ("fc", "header claims 2**40 floats"),
    ):
        tracemalloc.start()
        with pytest.raises(ModelFileError, match="expected shape|header claims"):
            load_model(files[key])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 << 20, (key, peak)  # the 1000000-wide layer alone would be 9 GB


def test_an_unexpected_member_is_refused_unread(cases, monkeypatch):
    files = {(k, n): p for k, n, p, _ in cases[0]}
    opened = []
    real = zipfile.ZipFile.open

    def spy(self, name, *a, **kw):
        opened.append(name if isinstance(name, str) else name.filename)
        return real(self, name, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    with pytest.raises(ModelFileError, match=r"unexpected entry \['junk'\]"):
        load_model(files[("fc", "unused 8 MB member")])
    assert opened and "junk.npy" not in opened


def test_format_version_is_required(cases):
    files = {(k, n): p for k, n, p, _ in cases[0]}
    with pytest.raises(ModelFileError, match="newer than this gpunet"):
        load_model(files[("fc", "version 99")])
    with pytest.raises(ModelFileError, match="version: expected a model format version 1..2, found None"):
        load_model(files[("cnn", "version missing")])


def test_nan_weights_nan_mean_and_int8_are_refused_not_predicted(cases, capsys):
    files = {(k, n): p for k, n, p, _ in cases[0]}
    for key, needle in (
        (("fc", "weights NaN"), "W1: expected finite weights"),
        (("cnn", "weights NaN"), "0.W: expected finite weights"),
        (("fc", "meta.mean NaN"), "meta.mean: expected a list of finite numbers"),
        (("fc", "weights int8"), "W1: expected floating-point weights, found dtype int8"),
        (("fc", "weights beyond float32"), r"'W1': values up to 1e\+300 do not fit the model's float32"),
        (("cnn", "weights beyond float32"), r"'0.W': values up to 1e\+300 do not fit"),
    ):
        with pytest.raises(ModelFileError, match=needle):
            load_model(files[key])


def test_param_shapes_agree_with_the_models_they_describe():
    models = [
        fer_fc(),
        fer_cnn(),
        FullyConnectedNet([5, 3], input_dim=4, num_classes=2, seed=0),
        nn.Sequential(
            [nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 3)], seed=0
        ),
    ]
    for m in models:
        own = {k: tuple(v.shape) for k, v in {**m.params, **getattr(m, "buffers", {})}.items()}
        assert modelspec.param_shapes(m.config(), "m") == own


def test_both_formats_and_the_packaged_model_still_load(cases):
    for kind, name, path, bad in cases[0]:
        if not bad:
            m = load_model(path)
            assert m.num_classes == 7 and m.meta["class_names"] == list(FER2013_CLASSES), name
    assert load_model(pretrained.path()).num_classes == 7
