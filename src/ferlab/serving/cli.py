"""`ferlab serve`: its options, their checks, and the start-up (the model loaded before the port
is bound, so a bad --model is a one-line error; a warning when listening beyond loopback)."""

import argparse
import ipaddress
import socket
import sys

from ferlab.errors import FerlabError
from ferlab.inference.recognizer import add_model_arguments, model_specs, recognizer_from_args
from ferlab.serving.app import MAX_MEGAPIXELS, create_app
from ferlab.serving.protocol import READ_TIMEOUT, uvicorn_options


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted photo in MB (default 10)")
    parser.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS,
                        help=f"largest accepted image in decoded megapixels, JPEGs after reduced-scale decoding "
                             f"(default {MAX_MEGAPIXELS:g}; a decode peaks at 8 bytes a pixel, {8 * MAX_MEGAPIXELS:g} MB)")
    parser.add_argument("--max-connections", type=int, metavar="N",
                        help="connections served at once; more are answered 503 (default: half the open-file limit "
                             "less 32, at most 1000)")
    parser.add_argument("--read-timeout", type=float, default=READ_TIMEOUT, metavar="S",
                        help=f"seconds a client has to send its request's headers, and the longest pause allowed in a "
                             f"body; slower clients get 408 and are disconnected (default {READ_TIMEOUT:g})")
    add_model_arguments(parser)
    parser.set_defaults(backend="auto")
    parser.epilog = "The service has no authentication: keep it on loopback or behind a proxy that adds it."


def run(args) -> int:
    try:
        import uvicorn
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart)
    except ImportError as e:
        raise FerlabError(f"ferlab serve needs fastapi, uvicorn and python-multipart (pip install 'ferlab[serve]'): {e}") from None

    if not 0 < args.port < 65536:
        raise FerlabError(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise FerlabError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.max_megapixels <= 0:
        raise FerlabError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    if args.max_connections is not None and args.max_connections < 1:
        raise FerlabError(f"--max-connections must be at least 1, got {args.max_connections}")
    if args.read_timeout <= 0:
        raise FerlabError(f"--read-timeout must be positive, got {args.read_timeout}")
    rec = recognizer_from_args(args)  # here, not in the lifespan: a bad --model is a one-line error
    app = create_app(model_specs(args), max_upload_mb=args.max_upload_mb, max_megapixels=args.max_megapixels, recognizer=rec)
    if not is_loopback(args.host):
        print(f"ferlab serve: warning: listening on {args.host} without authentication: anyone who can reach "
              "this port can use the service", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"ferlab serve: model {' + '.join(model_specs(args))} ({rec.backend} backend, {rec.detector.name} detector) "
          f"on http://{shown}:{args.port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, **uvicorn_options(args.host, args.port, max_connections=args.max_connections,
                                       read_timeout=args.read_timeout))
    return 0
