"""gpunet-serve's JSON API, on a real uvicorn on 127.0.0.1 (httpx as the client).

Oracle: ``gpunet.detect_emotions`` on the same photo with the same model: the API must answer
the very same faces, boxes and probabilities (JSON carries floats exactly). Bad input must get
a 4xx and one line of JSON, and the server must go on serving.
"""

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

# the [serve] extra (in [dev]); without it these tests skip
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")
from PIL import Image

from gpunet.faces import FER_EMOTIONS, detect_emotions
from gpunet.serve import DEFAULT_MAX_UPLOAD, parse_size


def refusal(r, status, *words):
    """``r`` is ``status`` with one line of JSON, {"error": ...}, containing ``words``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    assert "\n" not in r.text.strip()
    body = r.json()
    assert list(body) == ["error"] and body["error"]
    for w in words:
        assert w in body["error"], body["error"]
    return body["error"]


def still_serving(live, photos):
    assert live.client.get("/api/health").status_code == 200
    r = live.client.post(
        "/api/emotions", content=photos["astronaut-192.png"], headers={"content-type": "image/png"}
    )
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_health_names_the_model_and_the_backend(live):
    h = live.client.get("/api/health").json()
    assert h["model"] == "fer2013.npz"
    assert h["backend"] in ("numpy", "cupy")
    assert h["emotions"] == list(FER_EMOTIONS) and h["max_upload"] == DEFAULT_MAX_UPLOAD == 10_000_000
    assert h["max_pixels"] == Image.MAX_IMAGE_PIXELS
    # the model's name, never where the server keeps it (any client could read the folders)
    folder = os.path.dirname(live.app.state.service.path)
    assert folder and folder not in json.dumps(h) and "model_path" not in h


@pytest.mark.parametrize("how", ["multipart", "raw"])
@pytest.mark.parametrize("name", ["astronaut.png", "astronaut.jpg"])
def test_faces_are_those_of_detect_emotions(live, photos, model, tmp_path, name, how):
    data = photos[name]
    if how == "multipart":
        r = live.client.post("/api/emotions", files={"photo": (name, data, "application/octet-stream")})
    else:
        kind = "image/png" if name.endswith(".png") else "image/jpeg"
        r = live.client.post("/api/emotions", content=data, headers={"content-type": kind})
    assert r.status_code == 200, r.text
    body = r.json()
    path = tmp_path / name
    path.write_bytes(data)
    expected = detect_emotions(str(path), model)  # the file, read by gpunet.faces as a path
    assert len(expected) == 1  # the astronaut's face, nothing else
    assert body["faces"] == expected  # same boxes, same floats
    assert max(body["faces"][0]["emotions"], key=body["faces"][0]["emotions"].get) == "happy"  # she smiles
    assert body["model"] == "fer2013.npz" and body["size"] == [512, 512] and body["ms"] > 0


def test_png_pixels_give_the_answer_of_the_array(live, photos, astronaut, model):
    r = live.client.post("/api/emotions", files={"photo": ("a.png", photos["astronaut.png"], "image/png")})
    assert r.json()["faces"] == detect_emotions(astronaut, model)  # skimage.data.astronaut() itself


def test_a_photo_without_a_face_is_an_empty_list(live, photos):
    r = live.client.post("/api/emotions", files={"photo": ("coffee.png", photos["coffee.png"], "image/png")})
    assert r.status_code == 200 and r.json()["faces"] == [] and r.json()["size"] == [600, 400]


@pytest.mark.parametrize(
    "name, words",
    [
        ("notes.txt", ["notes.txt", "not a readable image", "not JPEG or PNG"]),
        ("cut.jpg", ["cut.jpg", "truncated"]),
        ("cut.png", ["cut.png", "not a readable image"]),
        ("bomb-warn.png", ["too many pixels", "10000 x 10000"]),
        ("bomb.png", ["too many pixels", "decompression bomb"]),
        ("photo.gif", ["not JPEG or PNG"]),
    ],
)
@pytest.mark.parametrize("how", ["multipart", "raw"])
# Pillow's warning for a bomb would be noise on the server's stderr: here it would be an exception
# in the server's thread, so a 500 instead of the refusal
@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_a_bad_photo_is_one_line_of_json(live, photos, name, words, how):
    if how == "multipart":
        r = live.client.post("/api/emotions", files={"photo": (name, photos[name], "text/plain")})
    else:
        r = live.client.post(
            "/api/emotions", content=photos[name], headers={"content-type": "application/octet-stream"}
        )
        words = [w for w in words if w != name]  # a raw body has no file name
    refusal(r, 400, *words)
    still_serving(live, photos)


def test_bad_requests_are_one_line_of_json(live, photos):
    c = live.client
    refusal(c.post("/api/emotions", content=b"", headers={"content-type": "image/png"}), 400, "empty")
    refusal(c.post("/api/emotions", data={"note": "hi"}, files={"x": ("x", b"", "text/plain")}), 400, "empty")
    refusal(c.post("/api/emotions", data={"note": "hi"}, files={}), 415)  # urlencoded: not a photo
    body = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n'
    r = c.post("/api/emotions", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    refusal(r, 400, "no file", "photo")
    for kind, body in [("multipart/form-data", b"xx"), ("multipart/form-data; boundary=zz", b"garbage")]:
        refusal(
            c.post("/api/emotions", content=body, headers={"content-type": kind}), 400, "not a readable form"
        )
    two = {"a": ("a.jpg", photos["astronaut.jpg"]), "b": ("b.jpg", photos["astronaut.jpg"])}
    refusal(c.post("/api/emotions", files=two), 400, "not a readable form", "files")
    for kind in ("text/plain", "application/json", "image/gif", None):
        headers = {"content-type": kind} if kind else {}
        req = c.build_request("POST", "/api/emotions", content=photos["astronaut.jpg"], headers=headers)
        if kind is None:
            req.headers.pop("content-type", None)
        refusal(c.send(req), 415, "multipart/form-data", "image/jpeg")
    refusal(c.get("/api/emotions"), 405, "GET /api/emotions")
    refusal(c.get("/api/nothing"), 404, "/api/nothing")
    still_serving(live, photos)


def test_a_bug_is_a_500_in_one_line_and_the_server_goes_on(live, photos, caplog):
    service = live.app.state.service

    def broken(*a, **kw):
        raise RuntimeError("a bug in the forward pass")

    service.model.loss = broken
    try:
        r = live.client.post("/api/emotions", files={"photo": ("a.png", photos["astronaut-192.png"])})
    finally:
        del service.model.loss
    refusal(r, 500, "internal error (RuntimeError: a bug in the forward pass)", "server's log")
    still_serving(live, photos)


def test_an_upload_over_the_limit_is_413_before_the_body_is_read(start_server, photos):
    small = start_server(max_upload=100_000)  # the astronaut PNG is 4x that; its JPEG fits
    c = small.client
    assert c.get("/api/health").json()["max_upload"] == 100_000
    refusal(c.post("/api/emotions", files={"photo": ("a.png", photos["astronaut.png"])}), 413, "100,000")
    r = c.post("/api/emotions", content=photos["astronaut.png"], headers={"content-type": "image/png"})
    refusal(r, 413, "100,000 bytes")
    # no length declared (chunked): counted as it arrives
    r = c.post(
        "/api/emotions", content=iter([photos["astronaut.png"]]), headers={"content-type": "image/png"}
    )
    refusal(r, 413, "over the limit of 100,000 bytes")
    r = c.post("/api/emotions", content=photos["astronaut.png"], headers={"content-type": "text/plain"})
    refusal(r, 415, "text/plain")  # the type is said first: no point in sending less of it
    assert c.post("/api/emotions", files={"photo": ("a.jpg", photos["astronaut.jpg"])}).status_code == 200


def test_a_body_that_never_ends_is_refused_while_it_streams(start_server, photos):
    """A client sends an endless chunked body: the 413 comes after about the limit, not at the end
    (there is none), so the server neither waits for nor keeps what is over the limit."""
    limit, step = 1_000_000, 64 * 1024
    server = start_server(max_upload=limit)
    port = int(server.url.rsplit(":", 1)[1])
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /api/emotions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        s.setblocking(False)
        deadline = time.monotonic() + 20
        while not answer and sent < 64 * limit and time.monotonic() < deadline:
            try:
                s.sendall(b"%x\r\n" % step + b"\0" * step + b"\r\n")
                sent += step
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)  # the server stopped reading
            try:
                answer = s.recv(65536)
            except BlockingIOError:
                pass
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:200])
    assert b'{"error":"upload over the limit of 1,000,000 bytes (--max-upload)"}' in answer
    print(f"\n413 after {sent:,} bytes sent (limit {limit:,}; the rest sits in socket buffers)")
    still_serving(server, photos)


def test_fifty_concurrent_requests_share_one_model_safely(live, photos, model, tmp_path):
    """50 requests at once on 127.0.0.1: every answer equals detect_emotions's, the model's forward
    pass never runs twice at once (it is not thread-safe), and the event loop answers
    /api/health in the meantime. Latency per image is printed and written to latency.json."""
    n, photo = 50, photos["astronaut-192.png"]
    pixels = np.asarray(Image.open(__import__("io").BytesIO(photo)))
    expected = detect_emotions(pixels, model)
    assert len(expected) == 1
    service = live.app.state.service
    inside, most, calls, guard = 0, 0, 0, threading.Lock()
    forward = service.model.loss

    def probe(*a, **kw):  # counts forward passes running at the same moment
        nonlocal inside, most, calls
        with guard:
            inside += 1
            calls += 1
            most = max(most, inside)
        time.sleep(0.002)  # widens the window a second pass would need
        try:
            return forward(*a, **kw)
        finally:
            with guard:
                inside -= 1

    def one(i):
        t = time.perf_counter()
        r = live.client.post("/api/emotions", files={"photo": (f"p{i}.png", photo, "image/png")})
        return r, time.perf_counter() - t

    service.model.loss = probe
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            time.sleep(0.5)  # the requests are queued or running now
            t = time.perf_counter()
            health = live.client.get("/api/health")
            health_s = time.perf_counter() - t
            results = [f.result(timeout=180) for f in futures]
        wall = time.perf_counter() - start
    finally:
        del service.model.loss
    assert health.status_code == 200
    busy = [f for f in futures if not f.done()]
    assert not busy
    for r, _ in results:
        assert r.status_code == 200, r.text
        assert r.json()["faces"] == expected
    assert calls == n and most == 1, (calls, most)
    lat = np.array([s for _, s in results]) * 1000
    server_ms = np.array([r.json()["ms"] for r, _ in results])
    report = {
        "requests": n,
        "photo": "skimage astronaut, 192 x 192 PNG",
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 2),
        "per_image_ms": round(wall * 1000 / n, 1),
        "latency_ms": {
            k: round(float(f(lat)), 1)
            for k, f in [
                ("min", np.min),
                ("median", np.median),
                ("p95", lambda a: np.percentile(a, 95)),
                ("max", np.max),
            ]
        },  # fmt: skip
        "server_compute_ms_median": round(float(np.median(server_ms)), 1),
        "health_during_burst_ms": round(health_s * 1000, 1),
    }
    (tmp_path / "latency.json").write_text(json.dumps(report, indent=1))
    print("\ngpunet-serve, 50 concurrent requests:", json.dumps(report))
    assert health_s < 2.0, report  # the loop was not blocked by the inference backlog


@pytest.mark.parametrize(
    "text, n", [("10MB", 10_000_000), ("512KiB", 524_288), ("1.5 gb", 1_500_000_000), ("2000", 2000)]
)
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "0", "10XB", "-1MB", "MB", "0.1"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


# --------------------------------------------------------------------------- the Host header


def foreign(r, host):
    """``r`` is the DNS rebinding guard's refusal of ``host``: 400, one line of JSON naming it."""
    refusal(r, 400, f"Host {host!r}", "not a name this server answers to", "--allowed-host")
    assert r.headers["x-content-type-options"] == "nosniff"  # the security headers still come


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]:80"])
def test_a_foreign_host_is_refused_on_every_path(live, photos, host):
    """DNS rebinding: a page on evil.example, its name pointed at 127.0.0.1, reads nothing and
    posts nothing: every path answers the guard's refusal, before a body is read."""
    c, h = live.client, {"host": host}
    for r in (
        c.get("/", headers=h),
        c.get("/api/health", headers=h),
        c.get("/static/app.js", headers=h),
        c.get("/api/nothing", headers=h),
        c.post(
            "/api/emotions", content=photos["astronaut-192.png"], headers={**h, "content-type": "image/png"}
        ),
    ):
        foreign(r, host)
    still_serving(live, photos)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "LocalHost", "[::1]:8000"])
def test_the_loopback_names_are_answered(live, host):
    r = live.client.get("/api/health", headers={"host": host})
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_a_request_without_a_host_is_refused(live):
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")  # HTTP/1.0 allows leaving Host out
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert answer.endswith(
        b'{"error":"no Host header: not a name this server answers to (DNS rebinding guard); '
        b'its operator can allow a name with gpunet-serve --allowed-host NAME"}'
    ), answer


def test_allowed_hosts_are_the_only_names_answered(start_server):
    server = start_server(allowed_hosts=["faces.lan", "*.example.org", "127.0.0.1"])
    c = server.client
    for host in ("faces.lan", "FACES.LAN:8000", "a.example.org", "127.0.0.1"):
        assert c.get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ("localhost", "example.org", "faces.lan.evil.example"):  # the list replaces the default
        r = c.get("/api/health", headers={"host": host})
        foreign(r, host)
        assert "127.0.0.1" not in r.text  # the refusal does not tell which names would do
    anyone = start_server(allowed_hosts=["*"]).client
    assert anyone.get("/api/health", headers={"host": "evil.example"}).status_code == 200
