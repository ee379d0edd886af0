"""The HTTP service (`ferlab serve`) through FastAPI's TestClient: no port is opened."""

import io
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("onnxruntime")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx vs httpx2
    from fastapi.testclient import TestClient

from ferlab.cli import main  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.serving.app import create_app  # noqa: E402
from ferlab.serving.cli import is_loopback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def blank_png(width, height):
    """A valid all-zero RGBA PNG of width x height, written row by row (no full-size buffer):
    9400x9400 is 88 MP, under Pillow's 89 MP decompression-bomb limit, in ~350 KB."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row, parts = zlib.compressobj(9), bytes(1 + 4 * width), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def encode(pixels, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(astronaut, cat):
    return {
        "astronaut.png": encode(astronaut, "PNG"),
        "cat.jpg": encode(cat, "JPEG", quality=90),
        "gray.jpg": encode(np.full((240, 320, 3), 128, np.uint8), "JPEG"),
    }


@pytest.fixture(scope="module")
def client(fernet_weights):
    app = create_app(fernet_weights, max_upload_mb=2, detector="blazeface", backend="onnx")
    with TestClient(app) as c:  # runs the lifespan: the Recognizer is loaded here, once
        yield c


def post(client, data, name="photo.png", mime="image/png"):
    return client.post("/v1/predict", files={"image": (name, data, mime)})


def assert_json_error(r, status, text):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"detail"} and text in body["detail"] and "Traceback" not in body["detail"]


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "fernet_s" and body["backend"] == "onnx"
    assert body["classes"] == list(FER2013_CLASSES) and body["detector"] == "blazeface"


def test_predict_one_face(client, photos):
    r = post(client, photos["astronaut.png"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["width"] == 512 and body["height"] == 512
    (face,) = body["faces"]
    assert list(face["probs"]) == list(FER2013_CLASSES)
    assert sum(face["probs"].values()) == pytest.approx(1, abs=1e-4)
    assert face["label"] in FER2013_CLASSES and len(face["box"]) == 4
    assert all(abs(a - b) <= 6 for a, b in zip(face["box"], [174, 68, 104, 104]))


def test_no_face_gives_an_empty_list(client, photos):
    for name in ("cat.jpg", "gray.jpg"):
        r = post(client, photos[name], name, "image/jpeg")
        assert r.status_code == 200 and r.json()["faces"] == []


def test_raw_image_body(client, photos):
    r = client.post("/v1/predict", content=photos["astronaut.png"], headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_bad_input_gives_json_errors_and_the_server_keeps_serving(client, photos):
    assert_json_error(post(client, b"this is not an image\n", "notes.txt", "text/plain"), 415, "not an image")
    assert_json_error(post(client, photos["cat.jpg"][:2000], "cut.jpg", "image/jpeg"), 400, "truncated or corrupt")
    assert_json_error(post(client, b"", "empty.png"), 400, "empty")
    assert_json_error(client.post("/v1/predict", files={"photo": ("a.png", photos["astronaut.png"], "image/png")}),
                      422, "'image'")
    assert_json_error(client.post("/v1/predict", json={"image": "x"}), 415, "multipart/form-data")
    assert_json_error(client.post("/v1/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
                      400, "malformed")
    assert_json_error(client.get("/no-such-page"), 404, "Not Found")
    assert post(client, photos["astronaut.png"]).status_code == 200


def test_oversize_upload_is_413(fernet_weights, photos):
    big = photos["astronaut.png"]  # 0.4 MB against a 0.1 MB limit
    with TestClient(create_app(fernet_weights, max_upload_mb=0.1, detector="blazeface")) as c:
        assert_json_error(post(c, big), 413, "above the 0.1 MB limit")  # refused from Content-Length

        def chunks():  # no Content-Length: counted while reading
            for i in range(0, len(big), 32768):
                yield big[i:i + 32768]
        r = c.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.request.headers.get("content-length") is None
        assert_json_error(r, 413, "above the 0.1 MB limit")
        assert c.get("/healthz").status_code == 200
        small = encode(np.asarray(Image.fromarray(np.zeros((64, 64, 3), np.uint8))), "PNG")
        assert post(c, small).json()["faces"] == []


def test_concurrent_requests_share_the_model(client, photos):
    jobs = [("astronaut.png", 1), ("cat.jpg", 0), ("gray.jpg", 0)] * 8

    def one(job):
        name, n = job
        mime = "image/png" if name.endswith("png") else "image/jpeg"
        r = post(client, photos[name], name, mime)
        return r.status_code, len(r.json()["faces"]), n

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    assert all(status == 200 and got == want for status, got, want in results), results


def test_web_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in r.text and "default-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text


def test_ensemble(fernet_weights, other_weights, photos):
    with TestClient(create_app([fernet_weights, other_weights], detector="blazeface")) as c:
        body = c.get("/healthz").json()
        assert body["model"] == "fernet_s + fernet_s"
        assert body["weights"] == "fernet_s_random.safetensors + fernet_s_other.safetensors"
        faces = post(c, photos["astronaut.png"]).json()["faces"]
        assert len(faces) == 1 and sum(faces[0]["probs"].values()) == pytest.approx(1, abs=1e-5)


def test_cli_bad_model_is_a_one_line_error(capsys, fernet_weights, tmp_path):
    code = main(["serve", "--model", str(tmp_path / "missing.safetensors"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.safetensors" in err
    code = main(["serve", "--model", str(fernet_weights), "--model", str(tmp_path / "missing2.safetensors"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing2.safetensors" in err


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("8.8.8.8") and not is_loopback("no-such-host.invalid")


def test_no_copy_of_the_upload_on_disk(client, photos, monkeypatch, tmp_path):
    """A server killed mid-request leaves no copy of the user's photo behind: while the upload is
    decoded, nothing with a name is in the temporary folder (large multipart bodies spool to an
    unlinked file)."""
    import tempfile

    from PIL import ImageOps

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen, transpose = [], ImageOps.exif_transpose

    def spy(image, **kw):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        return transpose(image, **kw)

    monkeypatch.setattr(ImageOps, "exif_transpose", spy)
    big = encode(np.random.default_rng(0).integers(0, 256, (700, 700, 3), np.uint8), "PNG")  # > 1 MB: spooled
    for data in (photos["astronaut.png"], photos["cat.jpg"], big):
        assert post(client, data).status_code == 200
    assert seen == [[], [], []]


def test_huge_image_is_413_before_decoding(client):
    """9400x9400 RGBA in 350 KB: decoding it took the server from 0.5 to 2.4 GB (4.6 GB four at
    once); now refused from its header by the megapixel limit (default 40 MP)."""
    bomb = blank_png(9400, 9400)
    assert len(bomb) < 2e6
    assert_json_error(post(client, bomb, "bomb.png"), 413, "9400x9400 (88.4 MP), above this server's 40 MP limit")


def test_megapixel_limit_and_reduced_decoding(fernet_weights):
    from ferlab.serving.app import ApiError, decode

    with TestClient(create_app(fernet_weights, max_megapixels=0.5, detector="blazeface")) as c:
        assert_json_error(post(c, encode(np.zeros((800, 1000, 3), np.uint8), "PNG")), 413, "0.5 MP limit")
        jpeg = encode(np.zeros((1600, 2000, 3), np.uint8), "JPEG")
        assert_json_error(post(c, jpeg, "a.jpg", "image/jpeg"), 413, "2000x1600 (3.2 MP)")
        assert post(c, encode(np.zeros((700, 700, 3), np.uint8), "PNG")).json()["faces"] == []
        assert "images up to 0.5 megapixels" in c.get("/openapi.json").json()["info"]["description"]
    # a big non-JPEG is reduced right after decoding to a longest side of at most 2560 (the detector
    # works at 1280); boxes and sizes are in full-size pixels
    pixels, scale = decode(encode(np.zeros((1000, 6000), np.uint8), "PNG"), max_pixels=40e6)
    assert pixels.shape == (334, 2000, 3) and scale == pytest.approx(3, abs=0.01)
    pixels, scale = decode(encode(np.zeros((100, 3000, 4), np.uint8), "PNG"), max_pixels=40e6)  # RGBA
    assert pixels.shape == (50, 1500, 3) and scale == 2 and (pixels == 255).all()  # transparent -> white
    # with a lock, large images (above 4 MP) decode one at a time; small ones do not wait
    import threading

    lock, done = threading.Lock(), []
    with lock:
        worker = threading.Thread(target=lambda: done.append(decode(encode(np.zeros((2000, 2100), np.uint8), "PNG"),
                                                                   40e6, lock)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not done
        assert decode(encode(np.zeros((1000, 2000), np.uint8), "PNG"), 40e6, lock)[0].shape == (1000, 2000, 3)
    worker.join(10)
    assert done[0][0].shape == (2000, 2100, 3)
    # a JPEG counts after draft decoding: 24 MP at full size, 6 MP at 1/2
    pixels, scale = decode(encode(np.zeros((4000, 6000, 3), np.uint8), "JPEG"), max_pixels=10e6)
    assert pixels.shape == (2000, 3000, 3) and scale == 2
    with pytest.raises(ApiError, match="6000x4000 .24 MP.* above this server's 10 MP limit"):
        decode(encode(np.zeros((4000, 6000, 3), np.uint8), "PNG"), max_pixels=10e6)


def test_a_file_and_its_bytes_uploaded_decode_alike(client, photos, astronaut, tmp_path):
    """ferlab predict (a file) and ferlab serve (its bytes) take one decoding path, images.load_image:
    the same pixels and scale, and for the same bad image the same error (the file's names it)."""
    from ferlab.errors import FerlabError
    from ferlab.inference.images import load_image
    from ferlab.serving.app import decode

    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut)))
    exif = sideways.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 CW to view
    images = {**photos, "sideways.jpg": encode(np.asarray(sideways), "JPEG", exif=exif.tobytes()),
              "wide.png": encode(np.zeros((100, 3000, 4), np.uint8), "PNG"),  # reduced to 1500 px
              "big.jpg": encode(np.zeros((4000, 6000, 3), np.uint8), "JPEG")}  # drafted at 1/2
    for name, data in images.items():
        path = tmp_path / name
        path.write_bytes(data)
        (file_pixels, file_scale), (upload_pixels, upload_scale) = load_image(path), decode(data)
        assert file_scale == upload_scale and np.array_equal(file_pixels, upload_pixels), name
    too_many = "this server's 40 MP limit (--max-megapixels)"
    bad = {"notes.txt": b"this is not an image\n", "cut.jpg": photos["cat.jpg"][:2000], "empty.png": b"",
           "bomb.png": blank_png(9400, 9400)}
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(FerlabError) as from_file:
            load_image(path, 40e6, too_many)
        detail = post(client, data, name).json()["detail"]
        assert str(from_file.value) == f"{path}: {detail}"


@pytest.fixture(scope="module")
def live(fernet_weights):
    """A real uvicorn server on 127.0.0.1 (a free port), configured as `ferlab serve` runs it, in a
    thread of this process (its log records reach caplog): yields (host, port)."""
    import threading
    import time

    import uvicorn

    from ferlab.serving.protocol import uvicorn_options

    app = create_app(fernet_weights, max_upload_mb=2, detector="blazeface", backend="onnx")
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options("127.0.0.1", 0, log_config=None)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(15)


def raw_http(address, request: bytes, close_early=False) -> bytes:
    """Send raw bytes over a socket; the response (until the server closes), or b"" when
    close_early (the client hangs up)."""
    import socket

    with socket.create_connection(address, timeout=10) as s:
        s.sendall(request)
        if close_early:
            return b""
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_aborted_upload_is_one_info_line(live, photos, caplog):
    import logging
    import time

    body = photos["astronaut.png"]
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with caplog.at_level(logging.INFO):
        raw_http(live, head + body[:50_000], close_early=True)  # the client hangs up mid-body
        deadline = time.monotonic() + 10
        while not any("disconnect" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    ours = [r for r in caplog.records if r.name.startswith("ferlab")]
    assert [r.levelname for r in ours] == ["INFO"] and "disconnect" in ours[0].getMessage()
    assert ours[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_head_is_answered_like_get(client, live):
    for path in ("/", "/healthz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)
        assert r.headers["content-type"] == client.get(path).headers["content-type"]
        response = raw_http(live, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"", response


def test_unparsable_request_is_a_json_400(live):
    """Requests uvicorn rejects before the app sees them (here Content-Length: abc) get JSON too."""
    import json

    response = raw_http(live, b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                              b"Content-Length: abc\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), response
    assert b"content-type: application/json" in head.lower(), head
    detail = json.loads(body)["detail"]
    assert "invalid HTTP request" in detail and "\n" not in detail


def test_load_test_backs_off_and_stops_when_the_server_dies(tmp_path):
    """benchmarks/load_test.py against a server that answers /healthz and dies: it backs off and
    gives up after --give-up seconds without an answer, instead of spinning until --duration."""
    import json
    import subprocess
    import sys
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from pathlib import Path

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "model": "stub", "backend": "none"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    stub = HTTPServer(("127.0.0.1", 0), Health)
    port = stub.server_address[1]

    def one_then_die():
        stub.handle_request()
        stub.server_close()  # the port now refuses connections

    threading.Thread(target=one_then_die, daemon=True).start()
    photo = tmp_path / "gray.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(photo)
    script = Path(__file__).parents[1] / "benchmarks" / "load_test.py"
    t = time.monotonic()
    out = subprocess.run([sys.executable, str(script), f"http://127.0.0.1:{port}", "-c", "4", "-n", "10000", "-d", "60",
                          "--image", str(photo), "--give-up", "2"], capture_output=True, text=True, timeout=30)
    seconds = time.monotonic() - t
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert "no answer for 2 s" in report["stopped"] and report["ok"] == 0
    assert report["requests"] < 100 and seconds < 15, (report["requests"], seconds)


def test_form_field_file_is_accepted_too(client, photos):
    r = client.post("/v1/predict", files={"file": ("photo.png", photos["astronaut.png"], "image/png")})
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1


def test_openapi_schema_describes_the_contract(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/predict"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(form) == {"image", "file"} and "image/*" in op["requestBody"]["content"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Prediction"}
    assert {"400", "413", "415", "422", "503"} <= set(op["responses"])
    models = schema["components"]["schemas"]
    face = models["Face"]["properties"]
    assert set(face) == {"box", "score", "label", "confidence", "probs"}
    assert "detector" in face["score"]["description"] and "expression" in face["confidence"]["description"]
    assert set(models["Prediction"]["required"]) == {"faces", "width", "height"}
    health = schema["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"}


def test_docs_page_works_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    import re

    assert "<script" not in r.text  # nothing to load from a CDN: the page is complete as served
    assert all(link.startswith(("/", "#", "data:")) for link in re.findall(r'(?:src|href)="([^"]*)"', r.text))
    assert "curl -F image=@photo.jpg http://testserver/v1/predict" in r.text
    for text in ("POST /v1/predict", "GET /healthz", "detector", "confidence", "413", "megapixels", 'id="Face"'):
        assert text in r.text, text
    assert client.head("/docs").status_code == 200


def test_start_removes_upload_copies_an_older_server_left(fernet_weights, monkeypatch, tmp_path):
    """Servers before the in-memory decoding wrote /tmp/ferlab-upload-*.img and left them when
    killed: the next start removes those older than 10 minutes (a running old server's are newer)."""
    import os
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old, new, other = tmp_path / "ferlab-upload-ab12cd.img", tmp_path / "ferlab-upload-ef34gh.img", tmp_path / "other.img"
    for p in (old, new, other):
        p.write_bytes(b"a user's photo")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    with TestClient(create_app(fernet_weights, detector="blazeface")) as c:
        assert c.get("/healthz").status_code == 200
    assert not old.exists() and new.exists() and other.exists()


def test_ferlab_serve_logs_an_aborted_upload_in_one_line(fernet_weights, photos, tmp_path):
    """End to end, as a user runs it: `ferlab serve` in a subprocess, a client hanging up mid-upload."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "ferlab", "serve", "--port", str(port), "--model", str(fernet_weights),
                                   "--detector", "blazeface"], stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        body = photos["astronaut.png"]
        raw_http(("127.0.0.1", port), (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:50_000], close_early=True)
        deadline = time.monotonic() + 10
        while "disconnect" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(15)
    text = log.read_text()
    assert [line for line in text.splitlines() if "disconnect" in line] == [
        line for line in text.splitlines() if line.startswith("INFO:") and "upload aborted" in line], text
    assert text.count("disconnect") == 1 and "Traceback" not in text and "ERROR" not in text, text


def test_repeated_errors_are_logged_once_per_interval():
    """The same warning or error passes once per interval, then says how many were held back."""
    import logging
    import time

    from ferlab.serving.protocol import RepeatFilter

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(RepeatFilter(interval=0.2))
    logger = logging.getLogger("ferlab.test.repeat")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        for i in range(1000):
            logger.error("socket.accept() out of system resource: %s", i)
            logger.info("request %d", i)  # below WARNING: every one passes
        time.sleep(0.25)
        logger.error("socket.accept() out of system resource: %s", "again")
    finally:
        logger.removeHandler(handler)
    errors = [r.getMessage() for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "999 more" in errors[1], errors
    assert sum(r.levelno == logging.INFO for r in records) == 1000


def test_idle_connections_neither_stall_the_server_nor_flood_the_log(fernet_weights, tmp_path):
    """Slowloris: half-open connections past the open-file limit made /healthz stop answering
    and the log fill with "Too many open files" tracebacks. `ferlab serve` with 128 open files (so at
    most 32 connections) and a 2 s read timeout, against 100 idle connections from this process on
    127.0.0.1: /healthz answers (or sheds with a JSON 503) at once, the idle connections are closed
    after the timeout, then /healthz answers 200, and the log stays small."""
    import json
    import resource
    import socket
    import subprocess
    import sys
    import time

    def status(address) -> tuple[int, bytes]:
        response = raw_http(address, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = ("127.0.0.1", port)
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        server = subprocess.Popen([sys.executable, "-m", "ferlab", "serve", "--port", str(port), "--model", str(fernet_weights),
                                   "--detector", "blazeface", "--read-timeout", "2"], stdout=err, stderr=err,
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
    idle = []
    try:
        deadline = time.monotonic() + 60
        while "Uvicorn running" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for _ in range(100):
            s = socket.create_connection(address, timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
            idle.append(s)
        start = time.monotonic()
        code, body = status(address)
        assert code in (200, 503) and time.monotonic() - start < 3, (code, body)
        if code == 503:
            assert "busy" in json.loads(body)["detail"]
        closed = 0
        for s in idle:  # each is answered (503 busy, or 408 after the read timeout) and closed by the server
            s.settimeout(8)
            while s.recv(65536):
                pass
            closed += 1
        assert closed == 100 and time.monotonic() - start < 10
        assert status(address)[0] == 200
    finally:
        for s in idle:
            s.close()
        server.terminate()
        server.wait(15)
    text = log.read_text()
    assert len(text) < 20_000 and text.count("Traceback") <= 1, text[-3000:]
