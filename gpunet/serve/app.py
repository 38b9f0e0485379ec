"""The Starlette application of ``gpunet-serve``: the page, its files and the JSON API.

Routes:

- ``GET /``: the page (``static/index.html``); ``/static/...``: its script and style sheet,
  served from the installed package (no CDN: it works offline).
- ``POST /api/emotions``: a JPEG or PNG photo as a multipart form (field ``photo``, or the
  form's only file) or as the raw body (``image/jpeg``, ``image/png`` or
  ``application/octet-stream``). Answers ``{"faces": [{"box": [x, y, w, h], "emotions":
  {...}}], "model": name, "ms": compute time, "size": [width, height]}``, the faces exactly as
  ``gpunet.detect_emotions`` finds them.
- ``GET /api/health``: the model's name (not its path: no client needs the server's folders),
  the backend, the emotions and the upload and pixel limits.

Every refusal under ``/api/`` is one line of JSON, ``{"error": "..."}``: 400 a photo that
cannot be read (not JPEG or PNG, truncated, a decompression bomb), 413 a body over
``max_upload`` (counted while it arrives, refused before the rest is read), 415 another
content type, 404/405 a wrong path or method. Photos are analysed in worker threads
(``EmotionService``), so the event loop keeps serving while they run.

DNS rebinding: a web page elsewhere can make a browser send requests to 127.0.0.1 under its own
host name. Starlette's ``TrustedHostMiddleware`` answers only requests whose ``Host`` header is
one of ``allowed_hosts`` (default ``LOOPBACK_HOSTS``); any other gets a 400 of one line of JSON,
on every path.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import backend
from ..faces import FER_EMOTIONS
from .service import DEFAULT_MAX_UPLOAD, EmotionService

STATIC = Path(__file__).resolve().parent / "static"
RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # the names of this computer a browser sends
# The page needs nothing from elsewhere; say so to the browser too.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),  # fmt: skip
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
log = logging.getLogger("gpunet.serve")


class TooLarge(Exception):
    """The request body passed the upload limit."""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)  # one line


def _limited(request: Request, limit: int) -> Request:
    """The same request, its body counted as it arrives: ``TooLarge`` past ``limit`` bytes."""
    receive, seen = request.receive, 0

    async def counted():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge
        return message

    return Request(request.scope, counted)


async def _photo(request: Request, limit: int):
    """``(bytes, name)`` of the photo in ``request``, or an error response."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data" and kind not in RAW_TYPES:
        return error(
            415,
            f"content type {kind or '(none)'}: send the photo as multipart/form-data (curl -F photo=@FILE) "
            f"or as a raw {', '.join(RAW_TYPES)} body",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return error(413, f"upload of {int(declared):,} bytes: the limit is {limit:,} bytes (--max-upload)")
    body = _limited(request, limit)
    try:
        if kind == "multipart/form-data":
            async with body.form(max_files=1, max_fields=16) as form:
                files = [v for k, v in form.multi_items() if isinstance(v, UploadFile)]
                picked = form.get("photo") if isinstance(form.get("photo"), UploadFile) else None
                upload = picked or (files[0] if files else None)
                if upload is None:
                    return error(400, "the form holds no file: send the photo as the file field 'photo'")
                return await upload.read(), upload.filename or "photo"
        data = bytearray()
        async for chunk in body.stream():
            data += chunk
        return bytes(data), "photo"
    except TooLarge:
        return error(413, f"upload over the limit of {limit:,} bytes (--max-upload)")
    except HTTPException as e:  # Starlette's multipart parser: a malformed form
        return error(400, f"not a readable form: {e.detail}")


def create_app(
    model=None, max_upload: int = DEFAULT_MAX_UPLOAD, workers=None, max_pixels=None, allowed_hosts=None
) -> Starlette:
    """The web application around one ``EmotionService`` (the model is loaded here, once).

    model: None (the packaged FER2013 model), a model file or a loaded model.
    max_upload: bytes one request body may hold; workers, max_pixels: see ``EmotionService``.
    allowed_hosts: the ``Host`` names answered (without the port; IPv6 in brackets, ``*.example.org``
        patterns as Starlette's); None: ``LOOPBACK_HOSTS``; ``["*"]``: any.
    """
    service = EmotionService(model, workers=workers, max_pixels=max_pixels)

    async def emotions(request: Request):
        got = await _photo(request, max_upload)
        if isinstance(got, JSONResponse):
            return got
        data, name = got
        if not data:
            return error(400, f"{name}: empty upload: expected a JPEG or PNG photo")
        try:
            result = await run_in_threadpool(service.analyse, data, name)
        except ValueError as e:
            return error(400, str(e))
        except Exception as e:  # a bug: the server keeps serving and logs the traceback
            log.exception("POST /api/emotions failed")
            return error(500, f"internal error ({type(e).__name__}: {e}); see the server's log")
        return JSONResponse({"faces": result["faces"], "model": service.name, **result})

    async def health(request: Request):
        return JSONResponse(
            {
                "status": "ok",
                "model": service.name,
                "backend": backend.name(),
                "emotions": list(FER_EMOTIONS),
                "max_upload": max_upload,
                "max_pixels": service.max_pixels or Image.MAX_IMAGE_PIXELS,
            }
        )

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def http_error(request: Request, exc: HTTPException):
        if request.url.path.startswith("/api/"):
            return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/emotions", emotions, methods=["POST"]),
            Route("/api/health", health),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=_lifespan(service),
    )
    app.add_middleware(_TrustedHosts, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS))
    app.add_middleware(_SecurityHeaders)  # outermost: on the refusals of a foreign Host too
    app.state.service = service
    return app


def _lifespan(service):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    return lifespan


class _TrustedHosts:
    """Starlette's ``TrustedHostMiddleware``, its refusal (plain text) turned into one line of JSON
    that names the Host and says how to allow one (not which are allowed: the operator sees those
    when the command starts)."""

    def __init__(self, app, allowed_hosts):
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        passed = False

        async def trusted(scope, receive, send):
            nonlocal passed
            passed = True
            await self.app(scope, receive, send)

        async def refused(message):
            if passed:
                return await send(message)
            if message["type"] == "http.response.start":  # the middleware's own 400; its body is dropped
                host = Headers(scope=scope).get("host")
                shown = "no Host header" if host is None else f"Host {host[:100]!r}"
                await error(
                    message["status"],
                    f"{shown}: not a name this server answers to (DNS rebinding guard); "
                    f"its operator can allow a name with gpunet-serve --allowed-host NAME",
                )(scope, receive, send)

        check = TrustedHostMiddleware(trusted, allowed_hosts=self.allowed_hosts, www_redirect=False)
        await check(scope, receive, refused)


class _SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, with_headers)
