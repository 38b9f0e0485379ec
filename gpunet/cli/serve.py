"""gpunet-serve: a web page that shows each face in a photo and its emotions.

    gpunet-serve                      # the packaged FER2013 model, http://127.0.0.1:8000/
    gpunet-serve MODEL.npz --port 8080 --max-upload 20MB
    gpunet-serve --host 0.0.0.0 --allowed-host faces.lan --allowed-host 192.168.1.20

Open the address it prints: drop or choose a photo (JPEG or PNG), or take a webcam snapshot,
and each face found gets a box, its top emotion and a bar chart of all seven. The same
answers come as JSON from POST /api/emotions (curl -F photo=@face.jpg URL/api/emotions);
GET /api/health names the model and the backend. It listens on 127.0.0.1 (this computer
only) unless --host says otherwise. It answers only requests addressed to the names it is
reached by (the Host header: a guard against DNS rebinding, where a web page elsewhere makes
your browser call this server under its own name): the --host address, and localhost,
127.0.0.1 and [::1] when that is this computer or every address (0.0.0.0); others reaching it
from another computer use a name or address that --allowed-host must list. Needs the extra:
pip install 'gpunet[serve]'.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import re
import signal
import socket
import sys

from .. import interrupts
from .common import UserError, add_common_args, run, setup


def _size(text):
    from ..serve.service import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(text):
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number 0 to 65535 (0: any free port)")
    return int(text)


def _pixels(text):
    n = int(text.replace(",", "").replace("_", "")) if re.fullmatch(r"[\d,_]+", text) else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of pixels, e.g. 40000000")
    return n


def _host_name(text):
    """An --allowed-host value as Starlette compares it: lower case, IPv6 in brackets, no port."""
    name = text.strip().lower()
    with contextlib.suppress(ValueError):
        return f"[{ipaddress.IPv6Address(name.strip('[]'))}]"
    if name == "*" or re.fullmatch(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", name):
        return name
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected a host name or address without the port (faces.lan, 192.168.1.20, "
        f"[fe80::1]), a pattern *.example.org, or * for any"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        default=None,
        help="FER2013 model file (default: the packaged one)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer)"
    )
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument(
        "--max-upload",
        type=_size,
        default="10MB",
        metavar="SIZE",
        help="largest request body, e.g. 10MB (the default), 512KiB or bytes",
    )
    p.add_argument(
        "--max-pixels",
        type=_pixels,
        default=None,
        metavar="N",
        help="largest photo, in pixels (width x height), decoded; a larger one is refused as a "
        "decompression bomb (default: Pillow's limit, about 89 million; each decoded pixel takes 3 bytes)",
    )
    p.add_argument(
        "--allowed-host",
        type=_host_name,
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to NAME (the Host header; repeatable): the name or "
        "address other computers use with --host 0.0.0.0; * answers any name (no DNS rebinding guard)",
    )
    add_common_args(p)
    return p


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; UserError naming the address when that fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise UserError(f"--host {host}: not an address to listen on ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"{host}:{port}: cannot listen there ({e.strerror or e})") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_hosts(host: str, extra=()) -> list:
    """The Host names a server bound to ``host`` answers: ``host`` itself, the loopback names when
    it is this computer or every address (0.0.0.0, ::), and ``extra`` (``--allowed-host``)."""
    from ..serve.app import LOOPBACK_HOSTS

    try:
        names = [_host_name(host)] if host not in ("0.0.0.0", "::", "") else []
    except argparse.ArgumentTypeError:  # not a name: listen() refuses it in one line
        names = [host]
    if _is_loopback(host) or not names:
        names += LOOPBACK_HOSTS
    return list(dict.fromkeys([*names, *extra]))  # in order, once each


def _body(args) -> int:
    backend_name = setup(args)
    try:
        import uvicorn

        from PIL import Image

        from ..faces import _cascade
        from ..serve.app import create_app

        _cascade()  # scikit-image's face detector: when missing, say so now, not at the first photo
    except ImportError as e:
        name = getattr(e, "name", None) or str(e)
        raise UserError(f"gpunet-serve needs the extra: pip install 'gpunet[serve]' ({name})") from None
    if args.max_pixels and args.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = args.max_pixels  # this process's Pillow refuses what the command allows
    hosts = allowed_hosts(args.host, args.allowed_host)
    app = create_app(args.model, max_upload=args.max_upload, max_pixels=args.max_pixels, allowed_hosts=hosts)
    logging.getLogger("python_multipart").setLevel(
        logging.ERROR
    )  # a bad form is the client's 400, not a log line
    sock = listen(args.host, args.port)
    service = app.state.service
    print(
        f"gpunet-serve: listening on {url(sock)} (model {service.name}, backend {backend_name}, "
        f"uploads up to {args.max_upload:,} bytes); Ctrl-C stops it",
        flush=True,
    )
    if "*" in hosts:
        print(
            "note: --allowed-host *: requests addressed to any name are answered", file=sys.stderr, flush=True
        )
    if not _is_loopback(args.host):
        print(
            f"note: --host {args.host}: other computers can reach this page; it answers to "
            f"{', '.join(hosts)} (add the name or address they use with --allowed-host)",
            file=sys.stderr,
            flush=True,
        )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = _server_class(uvicorn)(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.stopped_by is not None:  # raised here, once the event loop is closed
        raise interrupts.Interrupted(server.stopped_by)
    return 0


def _server_class(uvicorn):
    class Server(uvicorn.Server):
        """uvicorn's server; a stop signal (Ctrl-C, SIGTERM, SIGHUP) ends it gracefully (a second Ctrl-C:
        at once) and is remembered in ``stopped_by``, for gpunet's exit code once the loop is closed
        (uvicorn itself raises it again inside the loop)."""

        stopped_by = None

        @contextlib.contextmanager
        def capture_signals(self):
            def stop(signum, frame):
                if self.stopped_by is not None:  # the second: requests in progress are cut off, quietly
                    logging.getLogger("uvicorn.error").disabled = True
                self.stopped_by = self.stopped_by or signum
                self.handle_exit(signum, frame)

            before = {s: signal.signal(s, stop) for s in interrupts.STOP_SIGNALS}
            try:
                yield
            finally:
                for s, h in before.items():
                    signal.signal(s, h)

    return Server


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    raise SystemExit(main())
