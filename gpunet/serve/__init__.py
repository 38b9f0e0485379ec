"""``gpunet-serve``: a web page and a JSON API for the emotions of the faces in a photo.

- ``service``: ``EmotionService``, the model loaded once and shared by request threads (no web
  library needed); ``parse_size`` for ``--max-upload``.
- ``app``: ``create_app(model=None, max_upload=...)``, the Starlette application (the page, its
  files in ``static/``, ``POST /api/emotions``, ``GET /api/health``).
- ``gpunet.cli.serve``: the command, which runs the application with uvicorn.

Starlette, uvicorn, python-multipart and scikit-image (the face search of ``gpunet[faces]``) are
the extra ``gpunet[serve]``.
"""

from .service import DEFAULT_MAX_UPLOAD, EmotionService, parse_size


def create_app(*args, **kwargs):
    """``gpunet.serve.app.create_app`` (imported on call: Starlette is an optional extra)."""
    from .app import create_app

    return create_app(*args, **kwargs)


__all__ = ["DEFAULT_MAX_UPLOAD", "EmotionService", "create_app", "parse_size"]
