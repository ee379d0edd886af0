"""The HTTP service: `ferlab serve [--host 127.0.0.1] [--port 8000] [--model default]
[--max-upload-mb 10] [--max-megapixels 40]`.
(`--model A --model B`: an ensemble, as for ferlab predict; /healthz then names "A + B".)

    POST /v1/predict   multipart/form-data, the photo in field "image" or "file" (or the raw file as
                       the body with Content-Type image/* or application/octet-stream)
                       -> {"faces": [{"box", "score", "label", "confidence", "probs"}, ...],
                           "width": W, "height": H}   (as Recognizer.predict; W x H: the upright image)
    GET  /healthz      -> {"status": "ok", "model": ..., "classes": [...], "backend": ..., "detector": ...}
    GET  /             the web page (static/index.html: photo, drag-and-drop or webcam)
    GET  /docs         the API as a web page (docs_page: no script, works offline)
    GET  /openapi.json the API description (bodies: api_models; field meanings: FIELD_DOCS)
    HEAD               as GET, for /, /healthz and /docs

Errors are JSON `{"detail": "one line"}`, never a stack trace: 413 upload over --max-upload-mb
(refused from Content-Length before reading, and counted while reading for chunked uploads) or
image above --max-megapixels as decoded (refused from its header); 415 not multipart, or the
file is not an image; 400 a corrupt image, a malformed form, or a request uvicorn cannot parse
(guarded_protocol); 422 no file in field "image"/"file"; 500 anything unexpected (logged).
A client that disconnects mid-upload is one info line in the log.

Slow and many clients (guarded_protocol): a client has --read-timeout seconds (15) to send its
request's headers and may pause no longer within a body, else 408 and the connection closes;
past --max-connections (half the open-file limit less 32) a new connection is answered 503 at
once, so the server never runs out of file descriptors. A warning or error repeated is logged
once per 10 s (RepeatFilter).

Memory is bounded before decoding (see decode): at most --max-megapixels decoded, big images
reduced at once, and images above LARGE_PIXELS decoding one at a time. Uploads are decoded from
memory, never written to a named file: a killed server leaves no copy of anyone's photo behind (a
multipart body above 1 MB spools to an unlinked temporary file); the copies older versions
left are removed at start-up (remove_stale_uploads).

The Recognizer is loaded once, at start-up (the app's lifespan; `ferlab serve` loads it before
binding the port so a bad --model is a one-line error). Requests run in Starlette's threadpool:
up to `decode_slots` (= CPU count, at least 2) decode uploads at once, and detection +
classification run under one lock, because the detector's runtime session is shared (and
on a CPU, classifying one request at a time with all threads costs no throughput). The
classifier defaults to `--backend auto`: onnxruntime when installed, ~3x faster than PyTorch
fp32 here (see predict.Recognizer's backend).
"""

import argparse
import contextlib
from html import escape as plain
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
import warnings
from contextlib import asynccontextmanager
from pathlib import Path

from PIL import Image, ImageOps

from ferlab.errors import FerlabError
from ferlab.images import load_image, open_drafted, pil_to_rgb
from ferlab.recognizer import Recognizer, add_model_arguments, model_specs, recognizer_from_args

STATIC_DIR = Path(__file__).parent / "static"
MAX_MEGAPIXELS = 40.0  # default --max-megapixels: a decode peaks at 8 bytes a pixel, 320 MB at 40 MP
LARGE_PIXELS = 4e6  # images decoding to more pixels than this take turns (Service.large_decode)
REDUCED_SIDE = 2560  # non-JPEG images are reduced right after decoding to at most this longest side
MULTIPART_OVERHEAD = 64 * 1024  # boundary lines and part headers allowed on top of the file
READ_TIMEOUT = 15.0  # default --read-timeout: seconds for a request's headers, and the longest pause in its body
CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
       "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
log = logging.getLogger("ferlab.serve")


class ApiError(Exception):
    """An error answered as JSON {"detail": message} with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Service:
    """One Recognizer shared by all requests, with the lock and limits around it."""

    def __init__(self, recognizer, max_upload_bytes: int, name: str = "", max_pixels: float = MAX_MEGAPIXELS * 1e6):
        self.rec = recognizer
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.name = name
        self.lock = threading.Lock()  # detector + classifier: one request at a time
        self.decode_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
        self.large_decode = threading.Lock()  # images above LARGE_PIXELS decode one at a time

    def info(self) -> dict:
        cards = self.rec.cards
        if len(cards) == 1:
            weights = cards[0].get("weights_path")
            model, weights = cards[0].get("model", self.name or "custom"), Path(weights).name if weights else None
        else:  # an ensemble
            model = " + ".join(card.get("model", "custom") for card in cards)
            weights = " + ".join(Path(card["weights_path"]).name if card.get("weights_path") else "-" for card in cards)
        return {"status": "ok", "model": model, "weights": weights, "classes": list(self.rec.classes),
                "backend": getattr(self.rec, "backend", "torch"), "detector": getattr(self.rec.detector, "name", "?")}

    def predict(self, data: bytes) -> dict:
        """Image file bytes -> the response body. Blocking: call from a worker thread."""
        with self.decode_slots:
            pixels, scale = decode(data, self.max_pixels, self.large_decode)
            with self.lock:
                faces = self.rec.predict_pixels(pixels, scale)
        h, w = pixels.shape[:2]
        return {"faces": faces, "width": int(round(w * scale)), "height": int(round(h * scale))}


def decode(data: bytes, max_pixels: float = MAX_MEGAPIXELS * 1e6, large_lock=None):
    """Image bytes -> (RGB pixels, scale), decoded from memory with bounded pixels; ApiError for bad
    input. scale maps the decoded pixels to the file's full size (boxes are multiplied by it).

    - Nothing is written to disk: a killed server leaves no copy of the user's photo behind.
    - The header is read first; an image that would decode to more than max_pixels is a 413 before
      any pixel is decoded. A JPEG counts after draft decoding: one with a longest side of 5120 or
      more decodes at the smallest DCT scale (1/2, 1/4, 1/8) keeping it >= 2560, as
      images.open_drafted does for files, so a huge JPEG is accepted when 1/8 of it fits.
    - Any other format decodes at full size (Pillow decodes none of the common ones at reduced
      scale), then is reduced at once by an integer factor to a longest side of at most 2560, before
      the colour conversions: the detector works at 1280 anyway. Its peak is the decoded image plus
      one copy (reduce() premultiplies alpha): at most 8 bytes x max_pixels.
    - With large_lock, images above LARGE_PIXELS decode one at a time (the others wait), so the
      peak of a server is one such decode, not one per decode slot.
    - Upright by EXIF orientation; alpha composited onto white.
    """
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    is_jpeg = data[:3] == b"\xff\xd8\xff"
    limit_mp = f"{max_pixels / 1e6:g} MP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                im, (full_w, full_h) = open_drafted(data, is_jpeg)
            except Image.DecompressionBombError:  # above 2x Pillow's MAX_IMAGE_PIXELS, not a JPEG
                raise ApiError(413, f"image is above Pillow's decoding limit and this server's {limit_mp} limit") from None
            w, h = im.size  # what will be decoded
            if w * h > max_pixels:
                drafted = f", {w}x{h} at the smallest JPEG scale" if (w, h) != (full_w, full_h) else ""
                raise ApiError(413, f"image is {full_w}x{full_h} ({full_w * full_h / 1e6:.3g} MP{drafted}), "
                                    f"above this server's {limit_mp} limit (--max-megapixels); downscale it first")
            big = large_lock is not None and w * h > LARGE_PIXELS  # one at a time: the peak is its decode
            with large_lock if big else contextlib.nullcontext():
                im.load()
                if im.format not in ("JPEG", "MPO") and max(w, h) > REDUCED_SIDE:
                    if im.mode in ("1", "P", "PA", "I;16", "I;16B", "I;16L"):  # modes reduce() cannot average
                        im = im.convert({"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I"}.get(im.mode, "RGBA"))
                    im = im.reduce(-(-max(w, h) // REDUCED_SIDE))  # keeps info (EXIF)
                    w, h = im.size
                pixels = pil_to_rgb(ImageOps.exif_transpose(im))
                if big:
                    del im
                    release_freed_memory()
    except (ApiError, MemoryError):
        raise
    except Image.UnidentifiedImageError:
        raise ApiError(415, "the upload is not an image (or a format Pillow cannot read)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is bad input
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ApiError(400, f"truncated or corrupt image ({msg})") from None
    return pixels, (full_w / w + full_h / h) / 2


def release_freed_memory() -> None:
    """Give the memory freed after a large decode back to the OS (glibc's malloc_trim; a no-op
    elsewhere). Without it each worker thread's malloc arena keeps its own freed copy of a large
    image, and the peaks of successive large decodes add up instead of taking turns."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def remove_stale_uploads(max_age: float = 600.0) -> int:
    """Delete the /tmp/ferlab-upload-*.img copies of users' photos that servers before the in-memory
    decoding left when killed (ours, older than max_age seconds: a running old server's are newer).
    Returns how many went."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob("ferlab-upload-*.img"):
        try:
            st = path.lstat()
            mine = st.st_uid == os.getuid() if hasattr(os, "getuid") else True
            if path.is_file() and mine and time.time() - st.st_mtime > max_age:
                path.unlink()
                removed += 1
        except OSError:
            pass  # gone meanwhile, or not ours to remove
    return removed


def limits_text(max_upload_mb: float, max_megapixels: float) -> str:
    """The limits and the memory bound, as the OpenAPI description states them."""
    return (f"Limits: uploads up to {max_upload_mb:g} MB and images up to {max_megapixels:g} megapixels as decoded "
            f"(413 above, from Content-Length and from the image header, before decoding). A JPEG with a longest "
            f"side of 5120 or more decodes at 1/2, 1/4 or 1/8 scale and counts at that size; other formats decode "
            f"at full size and are reduced at once to a longest side of at most 2560. Memory: images above "
            f"{LARGE_PIXELS / 1e6:g} MP decode one at a time, each taking at most 8 bytes x {max_megapixels:g} MP = "
            f"{8 * max_megapixels:g} MB at its peak, plus the upload.")


async def read_image_field(request, max_bytes: int) -> bytes:
    """The bytes of the multipart field "image" (or of a raw image body), refusing more than
    max_bytes before reading (Content-Length) and while reading (chunked uploads)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    limit_mb = f"{max_bytes / 1e6:g} MB"
    content_type = request.headers.get("content-type", "").lower()
    raw = content_type.startswith(("image/", "application/octet-stream"))
    if not raw and not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "send the photo as multipart/form-data in a field named 'image'")
    body_limit = max_bytes + (0 if raw else MULTIPART_OVERHEAD)
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ApiError(400, "invalid Content-Length header")
        if int(length) > body_limit:
            raise ApiError(413, f"upload of {int(length) / 1e6:.1f} MB is above the {limit_mb} limit")

    async def limited():
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > body_limit:
                raise ApiError(413, f"upload is above the {limit_mb} limit")
            yield chunk

    if raw:
        return b"".join([chunk async for chunk in limited()])
    parser = MultiPartParser(request.headers, limited(), max_files=1, max_fields=16, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart form ({e.message})") from None
    try:
        upload = form.get("image") or form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "no file in the form field 'image' (or 'file')")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise ApiError(413, f"image of {len(data) / 1e6:.1f} MB is above the {limit_mb} limit")
    return data


FIELD_DOCS = {  # the response fields, as the OpenAPI schema (and so /docs) describes them
    "box": "[x, y, width, height] of the face, in pixels of the upright photo at full size",
    "score": "the face detector's confidence that the box holds a face (0-1; BlazeFace's detection score, "
             "faces below 0.5 are not reported). Says nothing about the expression",
    "label": "the most probable expression (a class of the model)",
    "confidence": "the expression classifier's probability of `label` (= probs[label], 0-1): how sure the model is "
                  "of the expression, not of the face",
    "probs": "the probability of every expression class of the model; they sum to 1",
    "width": "width of the upright photo (after its EXIF rotation), in pixels at full size",
    "height": "height of the upright photo, in pixels at full size",
}
REQUEST_BODY = {  # the request as OpenAPI describes it (the body is read by read_image_field, not by FastAPI)
    "required": True,
    "description": "The photo (JPEG, PNG, WebP, BMP, TIFF, GIF: any format Pillow reads), as a multipart form "
                   "field named `image` (or `file`), or as the raw body with Content-Type image/* or "
                   "application/octet-stream.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "image": {"type": "string", "format": "binary", "description": "the photo"},
            "file": {"type": "string", "format": "binary", "description": "the photo, when `image` is absent"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def api_models():
    """The pydantic models of the JSON bodies (built on demand: importing this module needs no pydantic)."""
    from pydantic import BaseModel, Field

    class Face(BaseModel):
        """One detected face and its expression."""
        box: list[int] = Field(min_length=4, max_length=4, description=FIELD_DOCS["box"])
        score: float = Field(description=FIELD_DOCS["score"])
        label: str = Field(description=FIELD_DOCS["label"])
        confidence: float = Field(description=FIELD_DOCS["confidence"])
        probs: dict[str, float] = Field(description=FIELD_DOCS["probs"])

    class Prediction(BaseModel):
        """The faces found in the photo (an empty list: none)."""
        faces: list[Face] = Field(description="the faces found; [] when there is none")
        width: int = Field(description=FIELD_DOCS["width"])
        height: int = Field(description=FIELD_DOCS["height"])

    class Health(BaseModel):
        """The service is up and its model loaded."""
        status: str = Field(description='"ok"')
        model: str = Field(description='the model ("A + B" for an ensemble)')
        weights: str | None = Field(description="the weights file(s), when the model came from one")
        classes: list[str] = Field(description="the expression classes, in the order of `probs`")
        backend: str = Field(description="the classifier's runtime: onnx or torch")
        detector: str = Field(description="the face detector")

    class Error(BaseModel):
        """Every error: one line, never a stack trace."""
        detail: str = Field(description="what went wrong, in one line")

    return Face, Prediction, Health, Error


def docs_page(schema: dict, base_url: str) -> str:
    """GET /docs: the OpenAPI schema as one static HTML page, with no script and nothing loaded from
    elsewhere (FastAPI's Swagger UI and ReDoc load theirs from a CDN, which fails offline)."""

    def escape(text: str) -> str:  # and `code` spans, as the descriptions write them
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", plain(text))

    def kind(s: dict) -> str:
        if "$ref" in s:
            name = escape(s["$ref"].rsplit("/", 1)[-1])
            return f'<a href="#{name}">{name}</a>'
        if "anyOf" in s:
            return " or ".join(kind(x) for x in s["anyOf"])
        if s.get("type") == "array":
            return f"list of {kind(s.get('items', {}))}"
        if isinstance(s.get("additionalProperties"), dict):
            return f"object: name -> {kind(s['additionalProperties'])}"
        return "file" if s.get("format") == "binary" else escape(str(s.get("type", "any")))

    def table(s: dict) -> str:
        required = set(s.get("required", []))
        rows = "".join(f"<tr><td><code>{escape(k)}</code>{'' if k in required else ' (optional)'}</td><td>{kind(v)}</td>"
                       f"<td>{escape(v.get('description', ''))}</td></tr>" for k, v in s.get("properties", {}).items())
        return f"<table><tr><th>field</th><th>type</th><th>meaning</th></tr>{rows}</table>"

    url = escape(base_url.rstrip("/"))
    info = schema.get("info", {})
    out = [f"<h1>{escape(info.get('title', 'API'))} <span>{escape(info.get('summary', ''))}</span></h1>",
           f"<p>{escape(info.get('description', ''))}</p>",
           f"<pre>curl -F image=@photo.jpg {url}/v1/predict\ncurl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' "
           f"{url}/v1/predict</pre>",
           '<p>Errors are JSON <code>{"detail": "one line"}</code>. The schema itself: <a href="/openapi.json">'
           "/openapi.json</a>.</p>"]
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            out.append(f'<section class="op"><h2><code>{method.upper()} {escape(path)}</code></h2>'
                       f"<p>{escape(op.get('description') or op.get('summary', ''))}</p>")
            body = op.get("requestBody")
            if body:
                out.append(f"<h3>Request</h3><p>{escape(body.get('description', ''))}</p>")
                for ctype, content in body.get("content", {}).items():
                    sch = content.get("schema", {})
                    out.append(f"<h4><code>{escape(ctype)}</code></h4>" + (table(sch) if "properties" in sch else f"<p>{kind(sch)}</p>"))
            rows = "".join(
                f"<tr><td>{escape(code)}</td><td>{escape(r.get('description', ''))}</td><td>"
                + ", ".join(kind(c["schema"]) for c in r.get("content", {}).values() if "schema" in c) + "</td></tr>"
                for code, r in op.get("responses", {}).items())
            out.append(f"<h3>Responses</h3><table><tr><th>status</th><th>when</th><th>body</th></tr>{rows}</table></section>")
    out.append("<h2>Bodies</h2>")
    for name, sch in schema.get("components", {}).get("schemas", {}).items():
        out.append(f'<section id="{escape(name)}"><h3>{escape(name)}</h3><p>{escape(sch.get("description", ""))}</p>{table(sch)}</section>')
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            'initial-scale=1"><title>ferlab API</title><link rel="icon" href="data:,"><link rel="stylesheet" '
            f'href="/static/style.css"></head>\n<body class="docs">{"".join(out)}</body></html>\n')


def create_app(model="default", *, max_upload_mb: float = 10.0, max_megapixels: float = MAX_MEGAPIXELS, recognizer=None,
               **recognizer_kwargs):
    """The FastAPI app. The Recognizer is built at start-up from `model` (one model or a list:
    an ensemble) and `recognizer_kwargs` (see predict.Recognizer), unless an already-built
    `recognizer` is given (then the app closes it at shutdown all the same)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    @asynccontextmanager
    async def lifespan(app):
        rec = recognizer if recognizer is not None else await run_in_threadpool(lambda: Recognizer(model, **recognizer_kwargs))
        name = " + ".join(map(str, model)) if isinstance(model, (list, tuple)) else str(model)
        app.state.service = Service(rec, int(max_upload_mb * 1e6), name, max_megapixels * 1e6)
        if removed := remove_stale_uploads():
            log.info("removed %d upload copies an older ferlab serve left in %s", removed, tempfile.gettempdir())
        try:
            yield
        finally:
            rec.close()

    # /docs is ours (docs_page): Swagger UI and ReDoc load their scripts from a CDN, and this must work offline.
    app = FastAPI(title="ferlab", summary="facial expression recognition", lifespan=lifespan,
                  description=limits_text(max_upload_mb, max_megapixels), docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect):  # nobody to answer: one line, no traceback
        client = f"{request.client.host}:{request.client.port}" if request.client else "?"
        log.info("client %s disconnected during %s %s (upload aborted)", client, request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    def service(request: Request) -> Service:
        svc = getattr(request.app.state, "service", None)
        if svc is None:
            raise ApiError(503, "the model is still loading")
        return svc

    Face, Prediction, Health, Error = api_models()
    errors = {400: "corrupt image or malformed request", 413: "upload or image above the limits (see above)",
              415: "not an image, or not multipart/form-data", 422: "no file in the form field `image` (or `file`)",
              503: "the model is still loading"}

    @app.get("/healthz", response_model=Health, responses={503: {"model": Error, "description": errors[503]}})
    async def healthz(request: Request):
        """Whether the service is up, and which model, classes, backend and detector it uses."""
        return service(request).info()

    @app.head("/healthz", include_in_schema=False)
    async def healthz_head(request: Request):
        return await healthz(request)

    @app.post("/v1/predict", response_model=Prediction, openapi_extra={"requestBody": REQUEST_BODY},
              responses={code: {"model": Error, "description": text} for code, text in errors.items()})
    async def predict(request: Request):
        """Detect the faces in one photo and recognise the expression of each."""
        svc = service(request)
        data = await read_image_field(request, svc.max_upload_bytes)
        return await run_in_threadpool(svc.predict, data)

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs(request: Request):
        return HTMLResponse(docs_page(app.openapi(), str(request.base_url)))

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ---- the command ------------------------------------------------------------------------------

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


def json_response(status: int, reason: str, detail: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 response, `{"detail": detail}`, that closes the connection: for the answers
    given outside the app (a request uvicorn cannot parse, a busy server, a read timeout)."""
    body = json.dumps({"detail": detail}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def default_max_connections() -> int:
    """Half the open-file limit less 32 (the model, the log, the listening socket), 8 to 1000: at
    `ulimit -n 1024`, 480 connections, and the server never runs out of file descriptors."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(8, min(1000, soft // 2 - 32))


def guarded_protocol(max_connections: int, read_timeout: float = READ_TIMEOUT):
    """uvicorn's h11 HTTP protocol with guards against slow and too many clients:

    - read timeouts: a client has read_timeout seconds from connecting (or from the previous
      response) to send its request's headers, and may not pause longer than that while sending
      its body; past that it gets a JSON 408 and the connection is closed (a slow client holds no
      connection for long, however it trickles);
    - a cap on connections: past max_connections, a new connection is answered a JSON 503 at once
      and closed, so the server never runs out of file descriptors and keeps answering;
    - requests uvicorn cannot parse (a malformed request line or header, e.g. `Content-Length: abc`:
      the app never sees them) get a JSON 400 like every other error, not uvicorn's plain text.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        timer = None  # closes the connection when the client is too slow
        headers_deadline = None  # when the request being waited for must have its headers in
        shedding = False  # over max_connections: answered 503, closing

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.shed()
            else:
                self.watch()

        def shed(self) -> None:
            self.shedding = True
            self.connections.discard(self)
            log.warning("more than %d connections: answering 503 (--max-connections)", max_connections)
            self.transport.write(json_response(503, "Service Unavailable", "the server is busy (too many connections); "
                                               "retry in a moment", "retry-after: 1"))
            self.transport.write_eof()  # then close when the request arrives (read, so no reset) or in a second
            self.timer = self.loop.call_later(1.0, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self.shedding:
                self.transport.close()
                return
            super().data_received(data)
            self.watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.watch()

        def connection_lost(self, exc) -> None:
            if self.timer is not None:
                self.timer.cancel()
            super().connection_lost(exc)

        def watch(self) -> None:
            """Arm the timer for what the connection waits for: headers by their deadline, or the next
            piece of a body within read_timeout; none while the app works on a request."""
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # waiting for a request
                if self.headers_deadline is None:
                    self.headers_deadline = self.loop.time() + read_timeout
                self.timer = self.loop.call_at(self.headers_deadline, self.timed_out)
                return
            self.headers_deadline = None
            if self.cycle.more_body:
                self.timer = self.loop.call_later(read_timeout, self.timed_out)

        def timed_out(self) -> None:
            self.timer = None
            if self.flow.read_paused:  # the app has not taken what came: not the client's delay
                self.timer = self.loop.call_later(read_timeout, self.timed_out)
                return
            waiting = self.cycle is None or self.cycle.response_complete  # else a body cut short: the app logs it
            if waiting and not self.conn.trailing_data[0]:  # not a byte of a request: an idle connection
                self.transport.close()
                return
            client = "%s:%d" % self.client if self.client else "?"
            log.warning("client %s sent no complete request within %g s (--read-timeout): closed", client, read_timeout)
            if waiting:
                self.transport.write(json_response(408, "Request Timeout", f"no complete request within {read_timeout:g} s"))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self.transport.write(json_response(400, "Bad Request", "invalid HTTP request: malformed request line or headers"))
            self.transport.close()

    return GuardedH11Protocol


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per `interval` seconds for each logger and message
    template (a flood of one error, e.g. "Too many open files", is one line each interval); the
    next one let through says how many were held back. Lower levels all pass."""

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval = interval
        self.seen = {}  # (logger, level, template) -> (time let through, held back since)
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self.lock:
            last, held = self.seen.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self.seen[key] = (last, held + 1)
                return False
            if len(self.seen) > 1000:  # templates are few; this bounds messages formatted in advance
                self.seen.clear()
            self.seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval:g} s, not logged)"
        return True


def uvicorn_options(host: str, port: int, log_config="ferlab", max_connections: int | None = None,
                    read_timeout: float = READ_TIMEOUT) -> dict:
    """How `ferlab serve` runs the app: uvicorn.run(app, **uvicorn_options(...)) (the tests run a
    live server with uvicorn.Config(app, **the same)). HTTP/1.1 by h11 with read timeouts, a cap on
    connections and JSON errors (guarded_protocol); uvicorn's logging with ferlab's lines (e.g. an
    aborted upload) beside its own and asyncio's, each warning or error once per 10 s at most
    (RepeatFilter), unless another log_config is given (None: leave logging alone)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    if log_config == "ferlab":
        log_config = copy.deepcopy(LOGGING_CONFIG)
        log_config["filters"] = {"once_per_interval": {"()": RepeatFilter, "interval": 10.0}}
        for handler in log_config["handlers"].values():
            handler["filters"] = ["once_per_interval"]
        log_config["loggers"]["ferlab"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
        log_config["loggers"]["asyncio"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    protocol = guarded_protocol(max_connections or default_max_connections(), read_timeout)
    return {"host": host, "port": port, "http": protocol, "log_config": log_config, "log_level": "info",
            "timeout_graceful_shutdown": 5}


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
