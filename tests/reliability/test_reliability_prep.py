"""Issue 13, gpunet-prep's half: every bad input of the report is one clean refusal.

Each test replays one defect on a tiny generated fixture: the API raises PrepError (a
ValueError) with one line naming the file, the command prints one ``error:`` line and
exits 2, there is no traceback, and nothing is left in the output folder.
"""

import io
import pickle
import struct
import tarfile
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from prep_fixtures import (
    cifar_batches,
    fer_rows,
    folder_listing,
    write_cifar_python,
    write_fer_csv,
    write_image_tree,
)

import data_prep
from data_prep import cli, safe_pickle, trees
from gpunet.data import h5file as fmt


def refused(tmp_path, dataset, src, *patterns, capsys=None):
    """convert must raise a one-line PrepError (also a ValueError) containing ``patterns``;
    the command must print one error line and exit 2; nothing may appear in tmp_path."""
    before = folder_listing(tmp_path)
    with pytest.raises(ValueError) as e:
        data_prep.convert(dataset, src, tmp_path / "out.h5", progress=False)
    assert isinstance(e.value, data_prep.PrepError)
    msg = str(e.value)
    assert "\n" not in msg and (str(src) in msg or Path(src).name in msg), msg
    for p in patterns:
        assert p in msg, f"{p!r} not in {msg!r}"
    if capsys is not None:
        capsys.readouterr()
        assert cli.main([dataset, str(src), "-o", str(tmp_path / "out.h5")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert folder_listing(tmp_path) == before
    return msg


def csv_lines(tmp_path, n=4):
    path = write_fer_csv(tmp_path / "fer2013.csv", fer_rows(n))
    return path, path.read_text().splitlines()


# --------------------------------------------------------------------------- CSV text


def test_csv_that_is_not_utf8_in_its_first_block(tmp_path, capsys):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(b"emotion,pixels,Usage\n\xff\xfe0," + b"1 " * 2303 + b"1,Training\n")
    refused(tmp_path, "fer2013", path, "expected UTF-8", capsys=capsys)


def test_csv_that_is_not_utf8_further_down(tmp_path, capsys):
    path, lines = csv_lines(tmp_path, 8)
    raw = ("\n".join(lines) + "\n").encode() + b"0,\xe9\xe9\xe9,Training\n"
    path.write_bytes(raw)
    refused(tmp_path, "fer2013", path, "expected UTF-8", capsys=capsys)


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663"])  # superscript two, Arabic-Indic three
def test_non_ascii_digit_as_pixel(tmp_path, capsys, digit):
    path, lines = csv_lines(tmp_path)
    label, pixels, usage = lines[2].split(",")
    lines[2] = ",".join([label, digit + " " + " ".join(pixels.split()[1:]), usage])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused(tmp_path, "fer2013", path, "line 3", "pixel 1", repr(digit), capsys=capsys)


@pytest.mark.parametrize("digit", ["\u00b2", "\u0663"])
def test_non_ascii_digit_as_label(tmp_path, capsys, digit):
    path, lines = csv_lines(tmp_path)
    lines[1] = digit + lines[1][1:]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused(tmp_path, "fer2013", path, "line 2", "label 0..6", capsys=capsys)


def test_non_ascii_digit_in_coursework_labels(tmp_path):
    root = write_image_tree(tmp_path / "cw", {"Train/a.jpg": np.zeros((48, 48), np.uint8)})
    (root / "labels_public.txt").write_text("img,emotion\nTrain/a.jpg,\u0663\n", encoding="utf-8")
    refused(tmp_path, "fer2013", root, "labels_public.txt line 2", "label 0..6")


# --------------------------------------------------------------------------- pickles


def _batches_with(tmp_path, name, blob):
    d = write_cifar_python(tmp_path / "src", cifar_batches(per_batch=10))
    (d / name).write_bytes(pickle.dumps(blob, protocol=2))
    return d


def test_pickled_label_of_2_to_the_70(tmp_path, capsys):
    data = np.zeros((2, 3072), np.uint8)
    d = _batches_with(tmp_path, "data_batch_2", {b"data": data, b"labels": [1, 2**70]})
    refused(tmp_path, "cifar10", d, "data_batch_2", "image 1", "71 bits", capsys=capsys)


def test_labels_of_nested_shared_lists_are_refused_at_once(tmp_path, capsys):
    """A small pickle that NumPy would expand to 2**60 elements (24 s, then MemoryError)."""
    nested = [1]
    for _ in range(60):
        nested = [nested, nested]
    d = _batches_with(tmp_path, "data_batch_1", {b"data": np.zeros((2, 3072), np.uint8), b"labels": nested})
    t0 = time.perf_counter()
    refused(tmp_path, "cifar10", d, "data_batch_1", "image 0", "label 0..9", capsys=capsys)
    assert time.perf_counter() - t0 < 10


def test_dict_key_of_nested_shared_tuples_is_refused_without_hashing_it(tmp_path):
    nested = (1,)
    for _ in range(60):
        nested = (nested, nested)  # hashing it would take 2**60 steps
    body = pickle.dumps(nested, protocol=2)[2:-1]
    blob = b"\x80\x02}" + body + b"K\x01s."  # {nested: 1}, built by hand: never hashed here
    d = write_cifar_python(tmp_path / "src", cifar_batches(per_batch=10))
    (d / "data_batch_3").write_bytes(blob)
    t0 = time.perf_counter()
    refused(tmp_path, "cifar10", d, "data_batch_3", "dict key of type tuple")
    assert time.perf_counter() - t0 < 10


def test_safe_unpickler_counts_its_opcodes(monkeypatch):
    monkeypatch.setattr(safe_pickle, "MAX_OPS", 50)
    with pytest.raises(pickle.UnpicklingError, match="more than 50 pickle opcodes"):
        safe_pickle.loads(pickle.dumps(list(range(100)), protocol=2))
    assert safe_pickle.loads(pickle.dumps([1, 2], protocol=2)) == [1, 2]


def test_data_given_as_nested_lists_is_refused(tmp_path):
    d = _batches_with(tmp_path, "data_batch_1", {b"data": [[0] * 3072] * 2, b"labels": [0, 1]})
    refused(tmp_path, "cifar10", d, "data_batch_1", "expected data uint8", "found list")


# --------------------------------------------------------------------------- sizes


def test_huge_member_in_a_small_tar_gz_is_refused_from_its_header(tmp_path, capsys):
    """A tar.gz of a few hundred bytes whose header announces a 2.5 GB member: refused before
    a byte of it is read (the real 2.5 GB case: same code path, the header's size)."""
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size = 2_500_000_000
    raw = io.BytesIO()
    raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
    raw.write(b"\0" * 512)  # a little of the member; the rest never comes
    path = tmp_path / "small.tar.gz"
    path.write_bytes(_gzip(raw.getvalue()))
    assert path.stat().st_size < 1000
    refused(tmp_path, "cifar10", path, "data_batch_1", "MiB per file", "found 2384 MiB", capsys=capsys)


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


def test_members_adding_up_past_the_total_budget(tmp_path, monkeypatch):
    d = write_cifar_python(tmp_path / "src", cifar_batches(per_batch=10))
    tar = tmp_path / "c.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(d, arcname=d.name)
    monkeypatch.setattr(trees, "MAX_TOTAL_BYTES", 100_000)
    refused(tmp_path, "cifar10", tar, "MiB in all")


def test_huge_image_header_refused_before_decoding(tmp_path):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )
    root = tmp_path / "tree"
    (root / "train" / "angry").mkdir(parents=True)
    (root / "train" / "angry" / "big.png").write_bytes(png)
    refused(tmp_path, "fer2013", root, "big.png", "expected a 48x48 image, found 9000x9000")
    from data_prep.images import decode_image

    with pytest.raises(data_prep.PrepError, match="at most 50000000 pixels"):
        decode_image(png, "big.png", resize=True)


# --------------------------------------------------------------------------- info


def _good_file(path, n=6):
    with fmt.create(
        path,
        dataset="t",
        class_names=["a", "b", "c"],
        mean=[1.0],
        std=[2.0],
        image_shape=(1, 2, 2),
        splits=["train", "test"],
    ) as f:
        for s in ("train", "test"):
            fmt.write_split(f, s, np.zeros((n, 1, 2, 2), np.uint8), np.arange(n) % 3, 4)
    return path


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def _replace_y(s, values):
    def fn(f):
        del f[f"{s}/y"]
        f[f"{s}/y"] = np.asarray(values, np.int64)

    return fn


def _unchunked(f):
    x = f["train/x"][()]
    del f["train/x"]
    f.create_dataset("train/x", data=x)  # contiguous


def _external(f):
    del f["train/x"]
    Path(f.filename).with_name("pixels.bin").write_bytes(b"\x07" * 24)
    f.create_dataset("train/x", (6, 1, 2, 2), np.uint8, external=[("pixels.bin", 0, 24)])


def _virtual(f):
    layout = h5py.VirtualLayout(shape=(6, 1, 2, 2), dtype=np.uint8)
    layout[:] = h5py.VirtualSource("other.h5", "x", shape=(6, 1, 2, 2))
    del f["train/x"]
    f.create_virtual_dataset("train/x", layout)


INFO_CASES = {
    "unchunked": (_unchunked, None),  # describable, and valid
    "negative label": (_replace_y("train", [0, -1, 2, 0, 1, 2]), "1 label(s) outside 0..2"),
    "label 50": (_replace_y("test", [0, 1, 2, 50, 1, 2]), "first at entry 3: 50"),
    "missing mean": (lambda f: f.attrs.__delitem__("mean"), "root attribute mean"),
    "NaN mean": (lambda f: f.attrs.__setitem__("mean", [np.nan]), "finite"),
    "missing split": (lambda f: f.__delitem__("test"), "split 'test' is listed"),
    "format_version one": (lambda f: f.attrs.__setitem__("format_version", "one"), "format_version"),
    "format_version 99": (lambda f: f.attrs.__setitem__("format_version", 99), "newer"),
    "no format_version": (lambda f: f.attrs.__delitem__("format_version"), "format_version"),
    "external storage": (_external, "external file"),
    "virtual dataset": (_virtual, "virtual dataset"),
    "no datasets": (lambda f: f.__delitem__("train/y"), "expected datasets /train/x and /train/y"),
}


@pytest.mark.parametrize("case", list(INFO_CASES))
def test_info_describes_malformed_files(tmp_path, capsys, case):
    edit, problem = INFO_CASES[case]
    path = _edit(_good_file(tmp_path / "d.h5"), edit)
    rc = cli.main(["info", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert str(path) in out  # what could be read is described
    if problem is None:
        assert rc == 0 and err == "" and "not chunked" in out
        return
    assert rc == 2 and err.startswith(f"error: {path}: ") and err.count("\n") == 1, err
    assert problem in err or problem in out, (out, err)
    rc = cli.main(["info", str(path), "--json"])
    assert rc == 2 and "problems" in capsys.readouterr().out
    with pytest.raises(ValueError, match=str(path)):
        data_prep.info(path)


def test_info_reports_labels_outside_the_classes_instead_of_dropping_them(tmp_path, capsys):
    path = _edit(_good_file(tmp_path / "d.h5"), _replace_y("train", [0, 50, 50, 1, 2, 2]))
    info = data_prep.info(path, strict=False)
    counts = info["splits"]["train"]["class_counts"]
    assert counts == {"a": 1, "b": 1, "c": 2} and info["splits"]["train"]["labels_outside"] == 2
    assert sum(counts.values()) + 2 == info["splits"]["train"]["count"]
    cli.main(["info", str(path)])
    assert "outside" in capsys.readouterr().out


# --------------------------------------------------------------------------- readers


READER_CASES = {
    "no format_version": (lambda f: f.attrs.__delitem__("format_version"), "found none"),
    "format_version 99": (lambda f: f.attrs.__setitem__("format_version", 99), "newer"),
    "format_version one": (lambda f: f.attrs.__setitem__("format_version", "one"), "integer"),
    "format_version '1' as text": (lambda f: f.attrs.__setitem__("format_version", "1"), "integer"),
    "external storage": (_external, "external file"),
    "virtual dataset": (_virtual, "virtual dataset"),
    "external link": (
        lambda f: f.__setitem__("val", h5py.ExternalLink("other.h5", "/train")),
        "external link",
    ),
    "NaN mean": (lambda f: f.attrs.__setitem__("mean", [np.nan]), "finite"),
    "infinite std": (lambda f: f.attrs.__setitem__("std", [np.inf]), "finite"),
    "zero std": (lambda f: f.attrs.__setitem__("std", [0.0]), "std > 0"),
}


@pytest.mark.parametrize("case", list(READER_CASES))
def test_every_reader_refuses(tmp_path, case):
    edit, pattern = READER_CASES[case]
    path = _edit(_good_file(tmp_path / "d.h5"), edit)
    for read in (fmt.read_meta, lambda p: fmt.load_split(p, "train")):
        with pytest.raises(ValueError) as e:
            read(path)
        assert str(e.value).startswith(str(path)) and pattern in str(e.value)
        assert "\n" not in str(e.value)


def test_info_of_a_valid_file_without_gpunet_prep_attributes(tmp_path, capsys):
    """``splits``, ``source`` and the like are gpunet-prep's additions, not the format's."""
    from gpunet.data.bench import write_synthetic

    write_synthetic(tmp_path / "s.h5", 20)
    assert cli.main(["info", str(tmp_path / "s.h5")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "total         20" in out
