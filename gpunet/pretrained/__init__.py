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
        raise FileNotFoundError(
            f"{p}: the packaged FER2013 model is missing from this gpunet "
            "install; pass model=PATH (a model trained with gpunet-train) "
            "or reinstall gpunet"
        )
    return p


def load():
    """The packaged FER2013 model, loaded onto the active backend (see ``gpunet.load_model``)."""
    from ..model import load_model  # imported here: ``gpunet.pretrained.path()`` stays light

    return load_model(path())


def package(run_dir, dest=None, data=None, split=None, max_bytes=5_000_000) -> dict:
    """Package the best model of a ``gpunet-train`` run folder as the shipped FER2013 model.

    Stores it in float16 (half the file) when that changes no prediction's accuracy on
    ``split`` of ``data`` (default: the run's own data file and reported split), else in
    float32; refuses a file over ``max_bytes``. Writes ``dest`` (default: this package's
    ``fer2013.npz``) and returns the record kept in its meta under ``"pretrained"``:
    recipe, seed, command, accuracies.
    """
    import json
    import os

    from ..metrics import classification_report
    from ..model import load_model
    from ..evaluation import evaluate

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no such file; is {run_dir} a finished gpunet-train run?")
    metrics = json.loads(metrics_path.read_text())
    model = load_model(run_dir / "model.npz")
    data = data or metrics["data"]
    split = split or metrics["split"]
    dest = Path(dest) if dest else Path(__file__).resolve().parent / FILE_NAME
    y_true, y32 = evaluate(model, data, split, batch_size=1000)
    half = dest.with_name(f".{dest.name}.half.npz")
    model.save(half, float16=True)
    try:
        y16 = evaluate(load_model(half), data, split, batch_size=1000)[1]
    finally:
        os.remove(half)
    acc32, acc16 = float((y32 == y_true).mean()), float((y16 == y_true).mean())
    use16 = acc16 >= acc32
    report = classification_report(y_true, y16 if use16 else y32, model.meta.get("class_names"))
    record = {
        "run": str(run_dir),
        "train_config": model.meta.get("train_config"),
        "seed": (model.meta.get("train_config") or {}).get("seed"),
        "command": "gpunet-train fer2013 --arch cnn --source PATH --out RUN && "
        "python scripts/package_model.py RUN",
        "split": split,
        "accuracy": report["accuracy"],
        "accuracy_float32": acc32,
        "accuracy_float16": acc16,
        "storage": "float16" if use16 else "float32",
        "macro_f1": report["macro_avg"]["f1"],
        "per_class_f1": {c["name"]: c["f1"] for c in report["per_class"]},
        "epochs_done": metrics.get("epochs_done"),
        "train_time_s": metrics.get("train_time_s"),
    }
    model.meta = {**model.meta, "pretrained": record}
    model.save(dest, float16=use16)
    size = dest.stat().st_size
    if size > max_bytes:
        os.remove(dest)
        raise ValueError(f"{dest}: {size} bytes, over the {max_bytes}-byte limit of a packaged model")
    return {**record, "bytes": size, "path": str(dest)}
