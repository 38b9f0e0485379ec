"""gpunet/io.py: files are complete or absent, never half-written."""

import os

import pytest

from gpunet.io import copy_file, save_figure, write_json


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_copy_file_is_atomic(tmp_path):
    src, dst = tmp_path / "a.npz", tmp_path / "out" / "b.npz"
    src.write_bytes(b"x" * 1000)
    copy_file(src, dst)
    assert dst.read_bytes() == b"x" * 1000 and _listing(dst.parent) == ["b.npz"]
    with pytest.raises(FileNotFoundError):
        copy_file(tmp_path / "missing.npz", dst)
    assert dst.read_bytes() == b"x" * 1000 and _listing(dst.parent) == [
        "b.npz"
    ]  # old copy kept, no temporaries


def test_save_figure_writes_png_and_cleans_up_on_error(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "f.png", dpi=50)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    class Broken:
        def savefig(self, path, **kw):
            with open(path, "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Broken(), tmp_path / "g.png")
    plt.close(fig)
    assert _listing(tmp_path) == ["f.png"]
    write_json(tmp_path / "h.json", {"a": 1})
    assert os.path.getsize(tmp_path / "h.json") > 0


def test_atomic_files_get_the_usual_mode(tmp_path):
    """A finished file gets 0666 minus the umask, not the 0600 of its temporary name."""
    import os
    from gpunet.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
