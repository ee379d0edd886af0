"""The routes of `ferlab serve` and the Service behind them: one Recognizer shared by all requests.

Errors are JSON `{"detail": "one line"}`, never a stack trace: 413 upload over --max-upload-mb
(refused from Content-Length before reading, and counted while reading for chunked uploads) or
image above --max-megapixels as decoded (refused from its header); 415 not multipart, or the
file is not an image; 400 a corrupt image, a malformed form, or a request uvicorn cannot parse
(protocol.guarded_protocol); 422 no file in field "image"/"file"; 500 anything unexpected
(logged). A client that disconnects mid-upload is one info line in the log.

Memory is bounded before decoding (see decode): at most --max-megapixels decoded, big images
reduced at once, and images above images.LARGE_PIXELS decoding one at a time. Uploads are decoded
from memory, never written to a named file: a killed server leaves no copy of anyone's photo
behind (a multipart body above 1 MB spools to an unlinked temporary file); the copies older
versions left are removed at start-up (remove_stale_uploads).

The Recognizer is loaded once, at start-up (the app's lifespan; `ferlab serve` loads it before
binding the port so a bad --model is a one-line error). Requests run in Starlette's threadpool:
up to `decode_slots` (= CPU count, at least 2) decode uploads at once, and detection +
classification run under one lock, because the detector's runtime session is shared (and
on a CPU, classifying one request at a time with all threads costs no throughput). The
classifier defaults to `--backend auto`: onnxruntime when installed, ~3x faster than PyTorch
fp32 here (see recognizer.Recognizer's backend).
"""

import logging
import os
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from ferlab.inference.images import ImageError, load_image
from ferlab.inference.recognizer import Recognizer
from ferlab.serving.apidocs import REQUEST_BODY, api_models, docs_page, limits_text

STATIC_DIR = Path(__file__).parent.parent / "static"
MAX_MEGAPIXELS = 40.0  # default --max-megapixels: a decode peaks at 8 bytes a pixel, 320 MB at 40 MP
MULTIPART_OVERHEAD = 64 * 1024  # boundary lines and part headers allowed on top of the file
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
    """An upload's bytes -> (RGB pixels, scale), decoded as ferlab predict decodes a file
    (images.load_image: the same limits, pixels, scale and error texts), with this server's
    --max-megapixels; ApiError with the image error's status (400, 413, 415) for bad input."""
    try:
        return load_image(data, max_pixels, f"this server's {max_pixels / 1e6:g} MP limit (--max-megapixels)", large_lock)
    except ImageError as e:
        raise ApiError(e.status, str(e)) from None


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
