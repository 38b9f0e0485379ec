"""The FER2013 model that ships with gpunet: the default of ``test_fer_model`` and
``detect_emotions``.

The trained file lives beside this module as ``fer2013.npz`` (package data, so a
wheel or an editable install carries it). ``path()`` is the one place that names
it, so tests can point the default elsewhere with ``monkeypatch.setattr``.
"""
from __future__ import annotations

from pathlib import Path

FILE_NAME = "fer2013.npz"


def path() -> Path:
    """Path of the packaged FER2013 model; FileNotFoundError saying what to do when it is absent."""
    p = Path(__file__).resolve().parent / FILE_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p}: the packaged FER2013 model is missing from this gpunet "
                                "install; pass model=PATH (a model trained with gpunet-train) "
                                "or reinstall gpunet")
    return p


def load():
    """The packaged FER2013 model, loaded onto the active backend (see ``gpunet.load_model``)."""
    from ..model import load_model  # imported here: ``gpunet.pretrained.path()`` stays light

    return load_model(path())
