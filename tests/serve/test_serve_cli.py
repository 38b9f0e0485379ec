"""The gpunet-serve command: it says where it listens, serves, stops on Ctrl-C with the usual exit
code, and refuses bad flags in one ``error:`` line; its page files are package data."""

import ast
import fnmatch
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the [serve] extra (in [dev]); without it these tests skip
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from common import REPO

STATIC = REPO / "gpunet" / "serve" / "static"


def start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "gpunet.serve", "--backend", "numpy", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args, timeout=60):
    p = start(*args)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.mark.parametrize(
    "stop, rc, said",
    [
        ([signal.SIGINT], 130, "interrupted by SIGINT"),
        ([signal.SIGINT, signal.SIGINT], 130, "interrupted by SIGINT"),  # the second: at once, quietly
        ([signal.SIGTERM], 143, "interrupted by SIGTERM"),
    ],
)
def test_it_listens_on_127_0_0_1_says_where_and_stops_on_a_signal(stop, rc, said):
    p = start("--port", "0", "-q")
    try:
        line = p.stdout.readline()  # printed once it listens
        assert line.startswith("gpunet-serve: listening on http://127.0.0.1:"), line
        url = line.split()[3]
        assert "model fer2013.npz (packaged with gpunet)" in line and "backend numpy" in line
        assert "10,000,000 bytes" in line
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 30
            while True:  # uvicorn starts serving a moment after the line
                try:
                    health = c.get("/api/health")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "gpunet-serve did not answer in 30 s"
                    time.sleep(0.1)
            assert health.json()["backend"] == "numpy"
            assert c.get("/").text.startswith("<!doctype html>")
            r = c.post("/api/emotions", content=b"text", headers={"content-type": "image/png"})
            assert r.status_code == 400
    finally:
        for sig in stop:
            p.send_signal(sig)
            time.sleep(0.05)
        out, err = p.communicate(timeout=30)
    assert p.returncode == rc, (p.returncode, err)
    assert err.strip() == said, err  # no traceback from uvicorn


def test_max_upload_and_host_are_used(tmp_path):
    p = start("--port", "0", "--host", "localhost", "--max-upload", "2KiB", "-q")
    try:
        line = p.stdout.readline()
        assert "2,048 bytes" in line, line
        url = line.split()[3]
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    r = c.post("/api/emotions", content=b"\0" * 3000, headers={"content-type": "image/png"})
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert r.status_code == 413 and "2,048 bytes" in r.json()["error"]
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)


def first_answer(c, *request, **kw):
    """``c.request(*request, **kw)``'s answer, once the server that printed its address serves."""
    deadline = time.monotonic() + 30
    while True:  # uvicorn starts serving a moment after the line
        try:
            return c.request(*request, **kw)
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "gpunet-serve did not answer in 30 s"
            time.sleep(0.1)


def test_max_pixels_and_allowed_hosts_are_used_and_a_bomb_leaves_stderr_quiet(photos):
    p = start("--port", "0", "--max-pixels", "100,000", "--allowed-host", "Faces.Test", "-q")
    try:
        url = p.stdout.readline().split()[3]
        with httpx.Client(base_url=url, timeout=30) as c:
            assert first_answer(c, "GET", "/api/health").json()["max_pixels"] == 100_000
            r = c.post("/api/emotions", files={"photo": ("a.png", photos["astronaut.png"])})
            assert r.status_code == 400 and "512 x 512 pixels, more than 100,000" in r.json()["error"]
            assert c.get("/api/health", headers={"host": "faces.test:80"}).status_code == 200
            r = c.get("/api/health", headers={"host": "evil.example"})
            assert r.status_code == 400 and r.json()["error"].startswith("Host 'evil.example': not a name")
            for name in ("bomb-warn.png", "bomb.png"):  # over Pillow's limit, and over twice it
                r = c.post("/api/emotions", files={"photo": (name, photos[name])})
                assert r.status_code == 400 and "too many pixels" in r.json()["error"]
            assert c.post("/api/emotions", files={"photo": ("s.png", photos["astronaut-192.png"])}).is_success
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert err.strip() == "interrupted by SIGINT", err  # was: Pillow's DecompressionBombWarning too


def test_on_every_address_it_says_which_names_it_answers():
    p = start("--port", "0", "--host", "0.0.0.0", "--allowed-host", "faces.lan", "--allowed-host", "10.1.2.3")
    try:
        line = p.stdout.readline()
        assert line.startswith("gpunet-serve: listening on http://0.0.0.0:"), line
        port = line.split()[3].rsplit(":", 1)[1].rstrip("/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for host, status in (
                ("localhost", 200),
                ("faces.lan", 200),
                ("10.1.2.3", 200),
                ("10.1.2.4", 400),
            ):
                assert first_answer(c, "GET", "/api/health", headers={"host": host}).status_code == status
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert (
        "note: --host 0.0.0.0: other computers can reach this page; it answers to "
        "127.0.0.1, localhost, [::1], faces.lan, 10.1.2.3 (add the name or address they use with "
        "--allowed-host)"
    ) in err, err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-upload", "10XB"], ["--max-upload", "'10XB'", "expected a size"]),
        (["--max-pixels", "0"], ["--max-pixels", "'0'", "expected a positive number of pixels"]),
        (["--allowed-host", "faces.lan:8000"], ["--allowed-host", "'faces.lan:8000'", "without the port"]),
        (["--allowed-host", "a*b"], ["--allowed-host", "'a*b'", "*.example.org"]),
        (["--port", "70000"], ["--port", "0 to 65535"]),
        (["/no/such/model.npz"], ["error: /no/such/model.npz", "no such model file"]),
        (["setup.py"], ["error: setup.py", "not a gpunet model file"]),
    ],
)
def test_bad_flags_are_one_error_line(args, words):
    rc, out, err = run(*args, "--port", "0") if "--port" not in args else run(*args)
    assert rc == 2 and out == "", (rc, out, err)
    last = err.strip().splitlines()[-1]
    for w in words:
        assert w in last, last


def test_a_port_in_use_is_one_error_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc, out, err = run("--port", str(port), "-q")
    assert rc == 2 and out == "", (rc, err)
    assert err.strip() == f"error: 127.0.0.1:{port}: cannot listen there (Address already in use)", err


def test_the_page_files_are_package_data():
    """An installed wheel carries every file of static/: setup.py's patterns match them all, and the
    page refers to nothing outside gpunet (no CDN)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    patterns = package_data["gpunet.serve"]
    files = sorted(p.relative_to(STATIC.parent).as_posix() for p in STATIC.iterdir())
    assert files == ["static/app.js", "static/index.html", "static/style.css"]
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), (f, patterns)
        text = (STATIC.parent / f).read_text()
        assert not re.search(r"(https?:)?//[\w-]+(\.[\w-]+)+", text), (f, re.search(r"//\S+", text))


def test_the_script_is_a_thin_wrapper():
    rc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "serve.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert rc.returncode == 0 and "usage: gpunet-serve" in rc.stdout
    assert Path(REPO / "scripts" / "serve.py").read_text().count("\n") < 15
