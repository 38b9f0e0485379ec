"""What the gpunet-serve tests share: the photos, and the application on a real uvicorn.

``live`` is ``create_app`` served by uvicorn in a thread of this process on 127.0.0.1, on a free
port the kernel picks; it stops (within seconds) when the test module ends. The model is the
packaged one, loaded on NumPy whatever backend the machine would choose.
"""

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from PIL import Image

from gpunet import backend, pretrained

# No module-level importorskip here (a skip while loading a conftest is an error): the test
# modules skip themselves when the [serve] extra is missing, the fixtures when scikit-image is.


def encode(pixels, fmt="PNG", **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(pixels).save(b, fmt, **kw)
    return b.getvalue()


def png_header_only(width, height) -> bytes:
    """A grey PNG that declares ``width`` x ``height`` pixels but holds four rows: what a
    decompression bomb looks like to a reader before it decodes (a real one is a few MB of
    zeros that inflate to gigabytes)."""

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def skdata():
    return pytest.importorskip("skimage.data")


@pytest.fixture(scope="session")
def astronaut(skdata):
    return skdata.astronaut()  # (512, 512, 3) uint8: one face (Eileen Collins)


@pytest.fixture(scope="session")
def photos(astronaut, skdata):
    jpeg = encode(astronaut, "JPEG", quality=90)
    small = np.asarray(Image.fromarray(astronaut).resize((192, 192), Image.Resampling.BILINEAR))
    return {
        "astronaut.png": encode(astronaut),
        "astronaut.jpg": jpeg,
        "astronaut-192.png": encode(small),  # one face still, a quarter of the search
        "coffee.png": encode(skdata.coffee()),  # a cup of coffee: no face
        "notes.txt": b"not a photo\n" * 20,
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "cut.png": encode(astronaut)[:100_000],
        "bomb-warn.png": png_header_only(10_000, 10_000),  # over Pillow's MAX_IMAGE_PIXELS (89e6)
        "bomb.png": png_header_only(20_000, 20_000),  # over twice it: Pillow's DecompressionBombError
        "photo.gif": encode(astronaut, "GIF"),
    }


@pytest.fixture(scope="session")
def model():
    with backend.using("numpy"):
        return pretrained.load()


class Live:
    """A running server: ``url``, ``app`` (its ``state.service``), ``client`` (httpx)."""

    def __init__(self, app):
        import socket

        import httpx
        import uvicorn

        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: (
            None
        )  # older uvicorn; newer skips them off the main thread
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 20 s")
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def close(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop within 20 s"


def _serve(model, **kw) -> Live:
    from gpunet.serve import create_app

    return Live(create_app(model, **kw))


@pytest.fixture(scope="module")
def live(model):
    server = _serve(model)
    yield server
    server.close()


@pytest.fixture
def start_server(model):
    """``start_server(**create_app's keywords)``: another live server, stopped after the test."""
    started = []

    def start(**kw):
        started.append(_serve(model, **kw))
        return started[-1]

    yield start
    for server in started:
        server.close()
