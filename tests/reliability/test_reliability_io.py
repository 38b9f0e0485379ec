"""Issue 13, the writers: signals, full disks, killed processes, file modes, concurrency.

Signal tests run gpunet-prep in a subprocess through ``SLOW``, a wrapper that makes
HDF5's writes slow (a sleep inside h5py's write callback, ``_DiskWriter.write``) and
touches a marker file once HDF5 is writing, so the signal lands during the write,
inside h5py, every time.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prep_fixtures import cifar_batches, fer_rows, folder_listing, write_cifar_python, write_fer_csv

import data_prep
from data_prep import cli as prep_cli
from gpunet import interrupts
from gpunet.cli.common import run
from gpunet.data import h5file as fmt
from gpunet.io import OutputExists, WriteError, atomic_path, savez, sweep_temporaries, write_json

from common import REPO as ROOT

SLOW = """
import sys, time, pathlib
from gpunet.data import h5file
real = h5file._DiskWriter.write
def slow_write(self, b):
    pathlib.Path(sys.argv[1]).touch()      # marker: HDF5 is writing
    time.sleep(float(sys.argv[2]))
    return real(self, b)
h5file._DiskWriter.write = slow_write
from data_prep.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _slow_prep(marker, args, delay=0.05):
    return subprocess.Popen(
        [sys.executable, "-c", SLOW, str(marker), str(delay)] + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _wait_for(marker, proc, timeout=60):
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "the write never started"
        time.sleep(0.01)


@pytest.fixture
def cifar_src(tmp_path):
    return write_cifar_python(tmp_path / "src", cifar_batches(per_batch=100))


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_during_the_hdf5_write_is_a_clean_stop(tmp_path, cifar_src, sig, code):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "writing"
    proc = _slow_prep(marker, ["cifar10", str(cifar_src), "-o", str(out_dir / "o.h5"), "--val-size", "50"])
    _wait_for(marker, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip() == f"interrupted by {signal.Signals(sig).name}", err  # no traceback
    assert folder_listing(out_dir) == set()  # no output, no temporary


API_SLOW = SLOW.replace(
    "from data_prep.cli import main\nsys.exit(main(sys.argv[3:]))",
    "import data_prep\ndata_prep.convert('cifar10', sys.argv[3], sys.argv[4], val_size=50)",
)


def test_sigterm_through_the_api_ends_the_process_as_sigterm_does_but_cleans_up(tmp_path, cifar_src):
    out_dir = tmp_path / "out"
    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", API_SLOW, str(marker), "0.05", str(cifar_src), str(out_dir / "o.h5")],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM and "Traceback" not in err, err
    assert not out_dir.exists() or folder_listing(out_dir) == set()


def test_sigkill_leaves_a_temporary_that_the_next_run_sweeps(tmp_path, cifar_src):
    out = tmp_path / "o.h5"
    marker = tmp_path / "writing"
    proc = _slow_prep(marker, ["cifar10", str(cifar_src), "-o", str(out), "--val-size", "50"])
    _wait_for(marker, proc)
    proc.kill()
    proc.communicate()
    left = [p.name for p in tmp_path.glob(".o.h5.tmp-*")]
    assert left and left[0].startswith(f".o.h5.tmp-{proc.pid}-"), left
    data_prep.convert("cifar10", cifar_src, out, val_size=50)
    assert not list(tmp_path.glob(".o.h5.tmp-*")) and data_prep.info(out)["splits"]["val"]["count"] == 50


def test_sweep_keeps_the_temporaries_of_live_processes(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        names = [
            f".m.npz.tmp-{dead}-0123abcd.npz",
            f".m.npz.tmp-{live.pid}-0123abcd.npz",
            f".m.npz.tmp-{os.getpid()}-0123abcd.npz",
            f".c.png.tmp-{dead}-89abcdef.png",
            "notes.txt",
            f"m.npz.tmp-{dead}-0123abcd.npz",
        ]  # not hidden: not ours
        for n in names:
            (tmp_path / n).write_bytes(b"x")
        assert sweep_temporaries(tmp_path, "m.npz") == [tmp_path / names[0]]
        assert sweep_temporaries(tmp_path) == [tmp_path / names[3]]
        assert {p.name for p in tmp_path.iterdir()} == set(names[1:3] + names[4:])
    finally:
        live.kill()
        live.wait()


class _Args:
    debug = False


def test_a_swallowed_signal_is_still_a_stop():
    """A library that catches the KeyboardInterrupt and goes on (h5py's deallocation does,
    printing "Exception ignored"): the command still ends with the signal's exit code."""

    def body(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
        except KeyboardInterrupt:
            pass  # swallowed
        return 0

    assert run(body, _Args()) == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_a_signal_lost_in_del_is_still_a_stop_without_noise(capsys):
    class Dropped:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(10000):  # the handler runs here, inside __del__
                pass

    def body(args):
        Dropped()
        return 0

    assert run(body, _Args()) == 129
    assert "Exception ignored" not in capsys.readouterr().err


def test_deferred_signal_is_raised_at_the_end_of_the_block():
    with interrupts.stop_signals():
        with pytest.raises(interrupts.Interrupted) as e:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                reached = True  # not raised inside the block
        assert reached and e.value.exit_code == 130


# --------------------------------------------------------------------------- full disks


class _FullDisk:
    """A binary file that fails with ENOSPC once ``room`` bytes were written."""

    def __init__(self, path, mode, room):
        self.f, self.room = open(path, mode), room

    def write(self, b):
        n = len(b.encode()) if isinstance(b, str) else memoryview(b).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_during_hdf5_write_simulated(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "open", lambda p, m: _FullDisk(p, m, 20_000), raising=False)
    out = tmp_path / "sub" / "o.h5"
    with pytest.raises(WriteError) as e:
        with fmt.create(
            out, dataset="t", class_names=["a"], mean=[1.0], std=[1.0], image_shape=(1, 16, 16)
        ) as f:
            fmt.write_split(f, "train", np.ones((500, 1, 16, 16), np.uint8), np.zeros(500), 64)
    assert str(e.value) == f"{out}: cannot write it: No space left on device; nothing was written"
    assert folder_listing(tmp_path) == set()  # the folder it made is gone too


def test_full_disk_in_convert_cli_simulated(tmp_path, monkeypatch, capsys, cifar_src):
    monkeypatch.setattr(fmt, "open", lambda p, m: _FullDisk(p, m, 100_000), raising=False)
    out = tmp_path / "o" / "o.h5"
    rc = prep_cli.main(["cifar10", str(cifar_src), "-o", str(out), "--val-size", "50"])
    err = capsys.readouterr().err
    assert rc != 0 and err == f"error: {out}: cannot write it: No space left on device; nothing was written\n"
    assert not (tmp_path / "o").exists()


def test_full_disk_for_other_writers_simulated(tmp_path, monkeypatch):
    import gpunet.io as gio

    monkeypatch.setattr(gio, "open", lambda p, m="r", **kw: _FullDisk(p, m, 100), raising=False)
    for write in (lambda p: savez(p, {"a": np.zeros(1000)}), lambda p: write_json(p, list(range(1000)))):
        with pytest.raises(WriteError, match="x.out: cannot write it: No space left"):
            write(tmp_path / "x.out")
        assert folder_listing(tmp_path) == set()


def _mount_tmpfs(where):
    where.mkdir()
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True
        )
    except OSError as e:  # no mount command at all
        pytest.skip(f"a 1 MB tmpfs cannot be mounted here ({e}); the simulated tests cover it")
    if r.returncode:
        pytest.skip(
            f"a 1 MB tmpfs cannot be mounted here ({r.stderr.strip() or r.returncode}); "
            "the simulated full-disk tests cover the code path"
        )


def test_full_disk_on_a_real_tmpfs(tmp_path, cifar_src):
    full = tmp_path / "full"
    _mount_tmpfs(full)
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "data_prep",
                "cifar10",
                str(cifar_src),
                "-o",
                str(full / "o.h5"),
                "--val-size",
                "50",
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
        assert r.returncode == 2, r.stderr  # not 139 (a segfault)
        assert (
            r.stderr
            == f"error: {full / 'o.h5'}: cannot write it: No space left on device; nothing was written\n"
        )
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", str(full)])


# --------------------------------------------------------------------------- modes, races


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_get_the_mode_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        savez(tmp_path / "a.npz", {"a": np.zeros(2)})
        with fmt.create(
            tmp_path / "b.h5", dataset="t", class_names=["a"], mean=[1.0], std=[1.0], image_shape=(1, 2, 2)
        ) as f:
            fmt.write_split(f, "train", np.zeros((2, 1, 2, 2), np.uint8), np.zeros(2), 2)
    finally:
        os.umask(old)
    for name in ("a.npz", "b.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_no_overwrite_refuses_a_target_that_appears_meanwhile(tmp_path):
    target = tmp_path / "o.json"
    with pytest.raises(OutputExists):
        with atomic_path(target, overwrite=False) as tmp:
            Path(tmp).write_text("new")
            target.write_text("theirs")  # another process finished first
    assert target.read_text() == "theirs" and folder_listing(tmp_path) == {"o.json"}


CONVERT = """
import sys, time
import data_prep
from data_prep import cli as prep_cli
from gpunet import datasets
real = data_prep.convert
def slow(*a, **kw):
    time.sleep(1.0)                              # both processes are surely inside find_data
    return real(*a, **kw)
data_prep.convert = slow
print(datasets.find_data("fer2013", sys.argv[1], source=sys.argv[2]))
"""


def test_concurrent_conversions_share_the_result(tmp_path):
    src = write_fer_csv(tmp_path / "fer2013.csv", fer_rows(12))
    home = tmp_path / "home"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT, str(home), str(src)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(o.strip().endswith("fer2013.h5") for o, _ in outs)
    assert sum(o.count(" -> ") for o, _ in outs) == 1, outs  # converted once
    assert sum(o.count("waiting for another process") for o, _ in outs) == 1, outs
    assert data_prep.info(home / "fer2013.h5")["splits"]["train"]["count"] == 4
    assert {p.name for p in home.iterdir()} == {"fer2013.h5"}  # the lock file goes with its holder
