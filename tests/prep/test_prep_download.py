"""Downloading without the internet: a local HTTP server thread, and file:// URLs."""

import hashlib
import http.server
import threading

import pytest
from prep_fixtures import cifar_batches, make_tar, write_cifar_python

import data_prep
from data_prep import PrepError, download

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = PAYLOAD
    cut_first = False  # close the connection halfway through the first response
    requests: list = []

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_first and len(type(self).requests) == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"requests": [], "cut_first": False})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, handler, f"http://127.0.0.1:{srv.server_address[1]}/file.bin"
    srv.shutdown()
    srv.server_close()


MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_plain_download_and_cache_hit(tmp_path, server):
    _, handler, url = server
    dest = tmp_path / "cache" / "file.bin"
    assert download.fetch(url, dest, MD5, delay=0) == dest
    assert dest.read_bytes() == PAYLOAD and not dest.with_name("file.bin.part").exists()
    download.fetch(url, dest, MD5, delay=0)  # already there: no second request
    assert len(handler.requests) == 1


def test_resume_after_broken_transfer(tmp_path, server):
    _, handler, url = server
    handler.cut_first = True
    dest = tmp_path / "file.bin"
    download.fetch(url, dest, MD5, delay=0)
    assert dest.read_bytes() == PAYLOAD
    assert handler.requests[0] is None
    assert handler.requests[1] == f"bytes={len(PAYLOAD) // 2}-"  # resumed with Range


def test_resume_existing_part_file(tmp_path, server):
    _, handler, url = server
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD[:1000])
    download.fetch(url, dest, MD5, delay=0)
    assert dest.read_bytes() == PAYLOAD and handler.requests == ["bytes=1000-"]


def test_md5_mismatch_removes_file(tmp_path, server):
    _, _, url = server
    dest = tmp_path / "file.bin"
    with pytest.raises(PrepError, match="md5"):
        download.fetch(url, dest, "0" * 32, delay=0)
    assert list(tmp_path.iterdir()) == []


def test_no_network_message(tmp_path):
    with pytest.raises(PrepError) as e:
        download.fetch(
            "http://127.0.0.1:9/cifar-10-python.tar.gz",
            tmp_path / "cifar-10-python.tar.gz",
            MD5,
            retries=2,
            delay=0,
        )
    msg = str(e.value)
    assert msg.startswith("no network") and "by hand" in msg and "pass it as SRC" in msg


def test_convert_with_download_from_file_url(tmp_path, monkeypatch):
    tar = make_tar(write_cifar_python(tmp_path / "s", cifar_batches(10)), tmp_path / "served.tar.gz")
    monkeypatch.setenv("GPUNET_CIFAR10_URL", tar.as_uri())
    monkeypatch.setenv("GPUNET_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setattr(download, "CIFAR10_MD5", hashlib.md5(tar.read_bytes()).hexdigest())
    out = data_prep.convert("cifar10", None, tmp_path / "c.h5", download=True, val_size=10)
    cached = tmp_path / "envcache" / "cifar-10-python.tar.gz"
    assert cached.read_bytes() == tar.read_bytes()
    info = data_prep.info(out)
    assert info["source"] == "cifar-10-python.tar.gz"
    assert info["source_md5"] == download.CIFAR10_MD5
    assert info["splits"]["val"]["count"] == 10
    data_prep.convert(
        "cifar10", None, tmp_path / "d.h5", download=True, val_size=10, cache_dir=tmp_path / "argcache"
    )  # the argument beats the env
    assert (tmp_path / "argcache" / "cifar-10-python.tar.gz").exists()


def test_download_rules(tmp_path, monkeypatch):
    with pytest.raises(PrepError, match="Kaggle"):
        data_prep.convert("fer2013", None, tmp_path / "f.h5", download=True)
    with pytest.raises(PrepError, match="not both"):
        data_prep.convert("cifar10", tmp_path, tmp_path / "f.h5", download=True)
    monkeypatch.delenv("GPUNET_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert download.cache_dir(None) == tmp_path / ".cache" / "gpunet"
