"""Issue 24 #5: a named pipe (FIFO) where a file is expected is refused at once, naming it; it used to
hang gpunet-evaluate, gpunet-predict, gpunet-export and load_model (a reader of a FIFO waits for a writer)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gpunet import load_model, pretrained
from gpunet.modelfile import ModelFileError

from common import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")


@pytest.fixture
def fifo(tmp_path):
    def make(name):
        path = tmp_path / name
        os.mkfifo(path)
        return path

    return make


def _cli(script, *args, timeout=60):
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args), "--backend", "numpy", "-q"],
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang fails here instead of blocking the suite
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    return p.returncode, p.stderr.strip().splitlines()


def test_load_model_refuses_a_fifo(fifo):
    with pytest.raises(ModelFileError, match="m.npz: expected a gpunet model file, found a named pipe"):
        load_model(fifo("m.npz"))


@pytest.mark.parametrize(
    "script, args",
    [
        ("evaluate.py", ["{fifo}", "--data", "{fifo}"]),
        ("predict.py", ["{fifo}", "{dir}"]),
        ("export.py", ["{fifo}", "-o", "{dir}/x.onnx"]),
    ],
)
def test_commands_refuse_a_fifo_model(fifo, tmp_path, script, args):
    f = fifo("m.npz")
    rc, err = _cli(script, *[a.format(fifo=f, dir=tmp_path) for a in args])
    assert rc == 2 and len(err) == 1 and "m.npz" in err[0] and "named pipe" in err[0], err


def test_evaluate_refuses_a_fifo_data_file(fifo):
    rc, err = _cli("evaluate.py", pretrained.path(), "--data", fifo("d.h5"))
    assert rc == 2 and err[-1].startswith("error:") and "d.h5" in err[-1] and "named pipe" in err[-1], err


def test_a_fifo_among_images_is_refused_by_name(fifo, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "a.png")
    fifo("b.png")
    rc, err = _cli("predict.py", pretrained.path(), tmp_path)
    assert rc == 2 and "b.png" in err[-1] and "named pipe" in err[-1], err


def test_detect_emotions_refuses_a_fifo(fifo):
    from gpunet.faces import read_photo

    with pytest.raises(ValueError, match="p.jpg: expected an image file, found a named pipe"):
        read_photo(fifo("p.jpg"))
