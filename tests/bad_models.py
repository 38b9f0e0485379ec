"""Bad model files for the reliability tests and ``scripts/fuzz_models.py``, made from a good one.

``variants(good_path, folder)`` writes one file per defect next to ``folder`` and returns
``[(name, path, bad)]``: ``bad`` is False for the controls that must still load (a version-1
file, float16 storage). Every bad file differs from the good one in one respect, so
a refusal can be checked to name the right entry.
"""

import json
import os
import zipfile

import numpy as np


def read_raw(path):
    """(description dict, {name: array}) of a model file, with NumPy alone."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        desc = json.loads(z["__meta__"].tobytes())
    return desc, arrays


def write_raw(path, desc, arrays, meta_bytes=None, compressed=False):
    """An .npz of ``arrays`` plus ``__meta__`` (``desc`` as JSON, or ``meta_bytes`` as given)."""
    meta = meta_bytes if meta_bytes is not None else json.dumps(desc).encode()
    out = dict(arrays)
    if meta is not False:
        out["__meta__"] = np.frombuffer(meta, np.uint8) if isinstance(meta, bytes) else meta
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **out)
    return path


def _set(d, dotted, value):
    """A deep copy of ``d`` with ``dotted`` ('config.hidden_dims', 'config.layers.0.type') set, or
    removed when ``value`` is ``DROP``."""
    d = json.loads(json.dumps(d))
    keys = dotted.split(".")
    node = d

    def index(node, k):  # "{MaxPool2d}": the first layer of that type
        if k.startswith("{"):
            return next(i for i, x in enumerate(node) if x.get("type") == k[1:-1])
        return int(k)

    for k in keys[:-1]:
        node = node[index(node, k)] if isinstance(node, list) else node[k]
    last = index(node, keys[-1]) if isinstance(node, list) else keys[-1]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    return d


DROP = object()

COMMON = [  # (name, dotted key, value)
    ("format missing", "format", DROP),
    ("format other", "format", "keras-model"),
    ("version missing", "version", DROP),
    ("version 99", "version", 99),
    ("version 'one'", "version", "one"),
    ("version true", "version", True),
    ("version 0", "version", 0),
    ("version 1.5", "version", 1.5),
    ("config missing", "config", DROP),
    ("config list", "config", [1, 2]),
    ("config null", "config", None),
    ("kind unknown", "config.kind", "mystery"),
    ("kind number", "config.kind", 5),
    ("dtype int8", "config.dtype", "int8"),
    ("dtype number", "config.dtype", 5),
    ("reg -1", "config.reg", -1),
    ("reg string", "config.reg", "x"),
    ("meta list", "meta", [1]),
    ("meta string", "meta", "x"),
    ("meta.mean NaN", "meta.mean", [float("nan")]),
    ("meta.mean string", "meta.mean", "abc"),
    ("meta.mean dict", "meta.mean", {"a": 1}),
    ("meta.mean 3 values", "meta.mean", [1.0, 2.0, 3.0]),
    ("meta.std 0", "meta.std", [0.0]),
    ("meta.std inf", "meta.std", [float("inf")]),
    ("meta.std -1", "meta.std", [-1.0]),
    ("meta.image_shape 2-d", "meta.image_shape", [1, 48]),
    ("meta.image_shape string", "meta.image_shape", "x"),
    ("meta.image_shape dict", "meta.image_shape", {"c": 1}),
    ("meta.image_shape 0", "meta.image_shape", [1, 0, 48]),
    ("meta.class_names 5", "meta.class_names", ["a", "b", "c", "d", "e"]),
    ("meta.class_names string", "meta.class_names", "abc"),
    ("meta.class_names ints", "meta.class_names", list(range(7))),
]
FULLY_CONNECTED = [
    ("hidden_dims missing", "config.hidden_dims", DROP),
    ("hidden_dims string", "config.hidden_dims", "abc"),
    ("hidden_dims float", "config.hidden_dims", [1.5]),
    ("hidden_dims -1", "config.hidden_dims", [-1]),
    ("hidden_dims [1000000]", "config.hidden_dims", [1000000]),
    ("hidden_dims [true]", "config.hidden_dims", [True]),
    ("hidden_dims nested", "config.hidden_dims", [[32]]),
    ("hidden_dims 2**40", "config.hidden_dims", [2**40]),
    ("input_dim missing", "config.input_dim", DROP),
    ("input_dim string", "config.input_dim", "48"),
    ("input_dim 0", "config.input_dim", 0),
    ("num_classes 1", "config.num_classes", 1),
    ("num_classes null", "config.num_classes", None),
    ("dropout string", "config.dropout", "x"),
    ("dropout 2", "config.dropout", 2),
]
SEQUENTIAL = [
    ("layers string", "config.layers", "abc"),
    ("layers empty", "config.layers", []),
    ("layers missing", "config.layers", DROP),
    ("layer type unknown", "config.layers.0.type", "Evil"),
    ("layer not a dict", "config.layers.0", 7),
    ("layer extra setting", "config.layers.0.evil", 1),
    ("conv kernel 0", "config.layers.{Conv2d}.kernel_size", 0),
    ("conv channels string", "config.layers.{Conv2d}.out_channels", "x"),
    ("conv padding -1", "config.layers.{Conv2d}.padding", -1),
    ("conv in_channels missing", "config.layers.{Conv2d}.in_channels", DROP),
    ("batchnorm eps string", "config.layers.{BatchNorm2d}.eps", "x"),
    ("linear out 1000000", "config.layers.-1.out_features", 1000000),
    ("linear in string", "config.layers.-1.in_features", "x"),
    ("input_shape string", "config.input_shape", "x"),
    ("input_shape 0", "config.input_shape", [1, 0, 48]),
    ("dropout p 1.5", "config.layers.{Dropout}.p", 1.5),
    ("maxpool size 0", "config.layers.{MaxPool2d}.size", 0),
    ("no Linear", "config.layers.-1.type", "ReLU"),
    ("no Flatten", "config.layers.{Flatten}.type", "ReLU"),
]


def _array_variants(arrays):
    """(name, new arrays, extra) for defects in the arrays; ``extra`` are raw bytes/arrays to add."""
    w = sorted(k for k in arrays if k.endswith("W") or k.startswith("W"))[0]  # "W1" or "0.W"
    b = w.replace("W", "b")
    shape = arrays[w].shape
    out = [
        (
            "weights NaN",
            {**arrays, w: np.where(np.arange(arrays[w].size).reshape(shape) == 0, np.nan, arrays[w])},
        ),
        ("weights inf", {**arrays, b: np.full(arrays[b].shape, np.inf, arrays[b].dtype)}),
        # finite in float64, inf in the model's float32 (issue 24 #10)
        ("weights beyond float32", {**arrays, w: np.full(shape, 1e300, np.float64)}),
        ("weights int8", {**arrays, w: arrays[w].astype(np.int8)}),
        ("weights int64", {**arrays, b: arrays[b].astype(np.int64)}),
        ("weights bool", {**arrays, b: arrays[b] > 0}),
        ("weights complex", {**arrays, b: arrays[b].astype(np.complex64)}),
        ("weights wrong shape", {**arrays, w: arrays[w][:-1]}),
        ("weights 0-d", {**arrays, b: np.float32(1)}),
        ("weights structured", {**arrays, b: np.zeros(arrays[b].shape, [("a", "f4")])}),
        ("weights missing", {k: v for k, v in arrays.items() if k != w}),
        ("extra small member", {**arrays, "junk": np.zeros(3, np.float32)}),
    ]
    return out


def variants(good, folder, compress_bomb_mb=64):
    """Write every bad variant of model file ``good`` into ``folder``; returns [(name, path, bad)]."""
    os.makedirs(folder, exist_ok=True)
    desc, arrays = read_raw(good)
    seq = desc["config"].get("kind") == "sequential"
    cases = []

    def add(name, desc_=None, arrays_=None, bad=True, **kw):
        path = os.path.join(folder, name.replace(" ", "_").replace("'", "").replace("*", "") + ".npz")
        write_raw(path, desc if desc_ is None else desc_, arrays if arrays_ is None else arrays_, **kw)
        cases.append((name, path, bad))

    for name, key, value in COMMON + (SEQUENTIAL if seq else FULLY_CONNECTED):
        try:
            add(name, _set(desc, key, value))
        except (KeyError, IndexError, StopIteration):
            pass  # the good model lacks that entry (e.g. no Dropout layer)
    for name, arr in _array_variants(arrays):
        add(name, arrays_=arr)
    add("meta not JSON", meta_bytes=b"\xff\xfe{")
    add("meta JSON list", meta_bytes=b"[1, 2]")
    add("meta deep nesting", meta_bytes=b"[" * 100000)
    add("meta float64", meta_bytes=np.zeros(4))
    add("no meta", meta_bytes=False)
    add(
        f"unused {compress_bomb_mb} MB member",
        arrays_={**arrays, "junk": np.zeros(compress_bomb_mb << 18, np.float32)},
        compressed=True,
    )
    add("object member (pickle)", arrays_={**arrays, "evil": np.array([{"x": 1}], dtype=object)})
    for name, data in (
        ("not a zip", b"hello"),
        ("empty file", b""),
        ("truncated", open(good, "rb").read()[: os.path.getsize(good) // 2]),
    ):
        path = os.path.join(folder, name.replace(" ", "_") + ".npz")
        with open(path, "wb") as f:
            f.write(data)
        cases.append((name, path, True))
    path = os.path.join(folder, "single.npy")
    np.save(path, np.zeros(3))
    cases.append(("a .npy array", path, True))
    path = os.path.join(folder, "header_lies.npz")  # a member whose header claims 2**40 floats
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__meta__.npy", _npy(np.frombuffer(json.dumps(desc).encode(), np.uint8)))
        for k, v in arrays.items():
            z.writestr(f"{k}.npy", _npy(v, shape=(2**20, 2**20) if k == sorted(arrays)[0] else None))
    cases.append(("header claims 2**40 floats", path, True))
    os.makedirs(os.path.join(folder, "a_folder.npz"), exist_ok=True)
    cases.append(("a folder", os.path.join(folder, "a_folder.npz"), True))
    cases.append(("missing file", os.path.join(folder, "nope.npz"), True))
    # controls: must load
    add("control: as saved", bad=False)
    add("control: float16 arrays", arrays_={k: v.astype(np.float16) for k, v in arrays.items()}, bad=False)
    if not seq:
        v1 = {k: v for k, v in desc.items()}
        v1["version"], v1["config"] = 1, {k: v for k, v in desc["config"].items() if k != "kind"}
        add("control: version 1", v1, bad=False)
    return cases


def _npy(a, shape=None):
    """The .npy bytes of ``a``; with ``shape``, a header that claims that shape over ``a``'s data."""
    import io

    buf = io.BytesIO()
    if shape is None:
        np.save(buf, a)
    else:
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False, "shape": shape}
        )
        buf.write(a.tobytes())
    return buf.getvalue()


def write_fer_inputs(folder):
    """Three random 48x48 face PNGs in ``folder/faces`` and a 20-image FER2013 test split in
    ``folder/fer.h5``: inputs every bad model file is tried against. Returns (faces, h5)."""
    from PIL import Image
    from gpunet.data import h5file as fmt
    from gpunet.predict import FER2013_CLASSES

    faces = folder / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L").save(faces / f"{i}.png")
    h5 = folder / "fer.h5"
    with fmt.create(
        h5,
        dataset="fer2013",
        class_names=list(FER2013_CLASSES),
        mean=[129.0],
        std=[65.0],
        image_shape=(1, 48, 48),
    ) as f:
        fmt.write_split(
            f, "test", rng.integers(0, 256, (20, 1, 48, 48), dtype=np.uint8), rng.integers(0, 7, 20), 8
        )
    return faces, h5
